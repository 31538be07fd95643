"""Running this machine's hive in the background, the way the machine prefers.

    Linux with a systemd user manager   ~/.config/systemd/user/rbee-hive.service (restarts on failure)
    macOS                                ~/Library/LaunchAgents/dev.rbee.hive.plist (KeepAlive)
    anything else                        a detached process and the hive's pid file

`rbee hive-agent start|stop|status|logs` (run over SSH by `rbee hive install/start/stop/logs`) call
these. Every way logs to the same file, so `logs` reads one place.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from rbee.common import paths
from rbee.common.logs import tail
from rbee.hive.config import HiveConfig

UNIT = "rbee-hive.service"
LAUNCHD_LABEL = "dev.rbee.hive"
START_WAIT_S = 30.0


class BackgroundError(RuntimeError):
    """The hive could not be started or stopped; the message quotes its log."""


def _run_argv() -> list[str]:
    return [sys.executable, "-m", "rbee", "hive-agent", "run"]


def manager() -> str:
    """'systemd', 'launchd' or 'process'."""
    if sys.platform == "darwin" and shutil.which("launchctl"):
        return "launchd"
    if shutil.which("systemctl") and shutil.which("loginctl"):
        probe = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, check=False)
        if probe.returncode == 0 and _lingering():
            return "systemd"
    return "process"


def _lingering() -> bool:
    """Whether this user's systemd manager outlives their sessions (else the hive would stop when the
    installer's SSH session ends): enable it when allowed, else use a detached process."""
    user = os.environ.get("USER") or ""
    shown = subprocess.run(["loginctl", "show-user", user, "-p", "Linger"], capture_output=True, text=True,
                           check=False)
    if shown.stdout.strip() == "Linger=yes":
        return True
    return subprocess.run(["loginctl", "enable-linger", user], capture_output=True, check=False).returncode == 0


def _unit_file() -> Path:
    return Path.home() / ".config" / "systemd" / "user" / UNIT


def _plist_file() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def _systemd_unit(log: Path) -> str:
    argv = " ".join(_run_argv())
    return (f"[Unit]\nDescription=rbee hive\nAfter=network-online.target\n\n"
            f"[Service]\nExecStart={argv}\nRestart=on-failure\nRestartSec=3\n"
            f"StandardOutput=append:{log}\nStandardError=append:{log}\n\n"
            f"[Install]\nWantedBy=default.target\n")


def running_pid() -> int | None:
    """The pid of this machine's hive, when one runs."""
    try:
        pid = int(paths.hive_pid_file().read_text().strip())
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and "hive-agent" in " ".join(proc.cmdline()):
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def start(config: HiveConfig) -> int:
    """Start the hive in the background and wait until it listens; returns its pid."""
    log = paths.ensure(paths.hive_log_file().parent) / paths.hive_log_file().name
    kind = manager()
    offset = log.stat().st_size if log.exists() else 0
    proc: subprocess.Popen[bytes] | None = None
    if kind == "systemd":
        paths.ensure(_unit_file().parent)
        _unit_file().write_text(_systemd_unit(log))
        subprocess.run(["systemctl", "--user", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "--user", "enable", "--now", UNIT], check=True, capture_output=True)
    elif kind == "launchd":
        paths.ensure(_plist_file().parent)
        with _plist_file().open("wb") as f:
            plistlib.dump({"Label": LAUNCHD_LABEL, "ProgramArguments": _run_argv(), "RunAtLoad": True,
                           "KeepAlive": {"SuccessfulExit": False}, "StandardOutPath": str(log),
                           "StandardErrorPath": str(log)}, f)
        subprocess.run(["launchctl", "load", "-w", str(_plist_file())], check=True, capture_output=True)
    else:
        with paths.open_private(log) as out:
            proc = subprocess.Popen(_run_argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        pid = running_pid()
        if pid is not None and _listening(pid, config.port):
            return pid
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise BackgroundError(f"the hive did not start (see {log}):\n" + "\n".join(_log_since(log, offset)))


def _listening(pid: int, port: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                   for c in psutil.Process(pid).net_connections("tcp"))
    return False


def _log_since(log: Path, offset: int) -> list[str]:
    lines = tail(log, 15)
    with contextlib.suppress(OSError), log.open("rb") as f:
        f.seek(offset)
        fresh = f.read().decode(errors="replace").splitlines()
        lines = fresh[-15:] or lines
    return lines


def stop() -> bool:
    """Stop the hive (and with it its workers); True when one was running."""
    kind = manager()
    pid = running_pid()
    if kind == "systemd" and _unit_file().exists():
        subprocess.run(["systemctl", "--user", "disable", "--now", UNIT], check=False, capture_output=True)
    elif kind == "launchd" and _plist_file().exists():
        subprocess.run(["launchctl", "unload", "-w", str(_plist_file())], check=False, capture_output=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(15)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    return True


def remove_service_files() -> None:
    for f in (_unit_file(), _plist_file()):
        f.unlink(missing_ok=True)
