"""Where rbee keeps things.

`RBEE_HOME` puts everything under one folder (tests use it); otherwise the XDG folders:
config in ~/.config/rbee, data (engines, models) in ~/.local/share/rbee, state (pid and
log files, databases) in ~/.local/state/rbee, cache (downloaded sources) in ~/.cache/rbee.

Secrets (`write_private`) and state (`private_dir`, `open_private`, `touch_private`: databases, logs,
the hive's folders) are for their owner only: files 600, folders 700, tightened when found looser.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import BinaryIO, Literal


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "rbee"


def _home() -> Path | None:
    home = os.environ.get("RBEE_HOME")
    return Path(home) if home else None


def config_dir() -> Path:
    home = _home()
    return home / "config" if home else _xdg("XDG_CONFIG_HOME", ".config")


def data_dir() -> Path:
    home = _home()
    return home / "data" if home else _xdg("XDG_DATA_HOME", ".local/share")


def state_dir() -> Path:
    home = _home()
    return home / "state" if home else _xdg("XDG_STATE_HOME", ".local/state")


def cache_dir() -> Path:
    home = _home()
    return home / "cache" if home else _xdg("XDG_CACHE_HOME", ".cache")


def engines_dir() -> Path:
    """Built engines; `RBEE_ENGINES_DIR` lets several homes share one build."""
    override = os.environ.get("RBEE_ENGINES_DIR")
    return Path(override) if override else data_dir() / "engines"


def hives_conf_file() -> Path:
    """The keeper's list of remote hives (ssh_config syntax); `RBEE_HIVES_CONF` overrides it."""
    override = os.environ.get("RBEE_HIVES_CONF")
    return Path(override).expanduser() if override else config_dir() / "hives.conf"


def ssh_control_dir() -> Path:
    """Where the keeper's SSH ControlMaster sockets live; `RBEE_SSH_CONTROL_DIR` overrides it.

    Deliberately short and outside RBEE_HOME: a Unix socket path must fit in ~100 bytes.
    """
    override = os.environ.get("RBEE_SSH_CONTROL_DIR")
    return Path(override) if override else Path(f"/tmp/rbee-ssh-{os.getuid()}")


def queen_pid_file() -> Path:
    return state_dir() / "queen.pid"


def queen_log_file() -> Path:
    return state_dir() / "queen.log"


def queen_db_file() -> Path:
    return state_dir() / "queen.sqlite"


def admin_token_file() -> Path:
    """The queen's admin token (mode 600): whoever can read it may manage the queen; `rbee` sends it."""
    return config_dir() / "admin.token"


def tls_dir() -> Path:
    """The cluster CA and this machine's certificates (see rbee/common/tls.py)."""
    return config_dir() / "tls"


def worker_log_dir() -> Path:
    """Where a hive keeps its workers' logs and pid files."""
    return state_dir() / "hive" / "workers"


def worker_log(worker_id: str) -> Path:
    """A worker's log; `ValueError` for an id that is not one (it must not reach another folder)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", worker_id) or ".." in worker_id:
        raise ValueError(f"{worker_id!r} is not a worker id")
    return worker_log_dir() / f"{worker_id}.log"


def hive_pid_file() -> Path:
    return state_dir() / "hive.pid"


def hive_log_file() -> Path:
    return state_dir() / "hive.log"


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by its owner only (secrets: tokens, keys, hive.toml)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # O_EXCL below: a leftover file's looser mode is never kept
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """`path`, made if needed (with its parents), and for its owner only (700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)
    return path


def _tighten(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):  # not ours (a shared folder someone else made): leave it
        info = path.stat()
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 != mode:
            path.chmod(mode)


def touch_private(path: Path) -> Path:
    """`path` (a database), made empty if missing, readable by its owner only (600); so are SQLite's journal
    files beside it, which it makes with the database's mode."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for companion in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm", "-journal"))):
        if companion.exists():
            _tighten(companion, 0o600)
    return path


def open_private(path: Path, mode: Literal["ab", "wb"] = "ab") -> BinaryIO:
    """Open a log for writing ("ab" or "wb"), made or tightened to 600, in a folder made 700 if missing."""
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
