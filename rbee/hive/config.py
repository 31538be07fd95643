"""A remote hive's own settings: `~/.config/rbee/hive.toml`, written by `rbee hive install`.

    alias = "gaming-pc"                      # its name in the queen's hives.conf
    queen_url = "http://192.168.1.10:7833"   # where it registers and sends heartbeats
    token = "..."                            # its join token (the file is private: mode 600)
    address = "192.168.1.20"                 # where the queen reaches it and its workers
    port = 7835
    models_dir = "/data/models"              # optional
    memory_budget = "24GiB"                  # optional
    tls = true                               # optional: HTTPS with ~/.config/rbee/tls/{hive.pem,hive.key,ca.pem}
    worker_threads = 4                       # optional: threads per worker (hives.conf's WorkerThreads)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from rbee.common import paths
from rbee.common.daemon import is_loopback
from rbee.common.tls import TLSFiles

DEFAULT_PORT = 7835


class HiveConfigError(ValueError):
    """hive.toml is missing or wrong; the message names the file and the fix."""


@dataclass(frozen=True)
class HiveConfig:
    alias: str
    queen_url: str
    token: str
    address: str
    port: int = DEFAULT_PORT
    models_dir: str | None = None
    memory_budget: str | None = None
    tls: bool = False
    worker_threads: int | None = None

    def tls_files(self) -> TLSFiles | None:
        folder = paths.tls_dir()
        return TLSFiles(folder / "hive.pem", folder / "hive.key", folder / "ca.pem") if self.tls else None

    def to_toml(self) -> str:
        return "".join(f"{key} = {_toml_value(value)}\n" for key, value in asdict(self).items() if value is not None)

    def apply_to_environment(self) -> None:
        """The hive's settings reach the code that reads them (models dir, memory budget) as for a local hive."""
        if self.models_dir:
            os.environ["RBEE_MODELS_DIR"] = self.models_dir
        if self.memory_budget:
            os.environ["RBEE_MEMORY_BUDGET"] = self.memory_budget
        if self.worker_threads:
            os.environ["RBEE_WORKER_THREADS"] = str(self.worker_threads)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_file() -> Path:
    return paths.config_dir() / "hive.toml"


def load(path: Path | None = None) -> HiveConfig:
    path = path or config_file()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HiveConfigError(f"{path} does not exist: this machine has no hive installed. "
                              "Install one from the queen's machine with `rbee hive install ALIAS`.") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HiveConfigError(f"{path} cannot be read: {exc}") from exc
    try:
        config = TypeAdapter(HiveConfig).validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HiveConfigError(f"{path}: '{'.'.join(map(str, first['loc']))}': {first['msg']}") from exc
    _check_secure(config, path)
    return config


def _check_secure(config: HiveConfig, path: Path) -> None:
    """Once this machine has the cluster CA (or tls = true), the join token never goes to the queen in clear."""
    split = urlsplit(config.queen_url)
    has_ca = (paths.tls_dir() / "ca.pem").is_file()
    if split.scheme != "https" and (config.tls or has_ca) and not is_loopback(split.hostname or ""):
        raise HiveConfigError(f"{path}: queen_url {config.queen_url} is plain HTTP, but this hive uses TLS: its join "
                              "token would cross the network in clear. Re-run `rbee hive install "
                              f"{config.alias}` on the queen's machine (it writes an https:// URL).")


def save(config: HiveConfig, path: Path | None = None) -> Path:
    """Write hive.toml readable by its owner only (it holds the join token)."""
    path = path or config_file()
    paths.write_private(path, config.to_toml().encode())
    return path
