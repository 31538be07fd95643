"""Starting, finding, upgrading and stopping the background queen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psutil

from rbee.common import paths, settings
from rbee.common.logs import tail
from rbee.common.version import current as current_version
from rbee.common.version import parse as parse_version
from rbee.contracts.status import QueenHealth
from rbee.keeper.client import NotAQueenError, QueenClient
from rbee.keeper.output import CLIError, Output

START_TIMEOUT_S = 30.0


def _is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def _port(url: str) -> int:
    return urlsplit(url).port or settings.DEFAULT_QUEEN_PORT


def probe(client: QueenClient) -> QueenHealth | None:
    try:
        return client.health()
    except NotAQueenError as exc:
        raise CLIError(
            f"port {_port(client.base_url)} is taken by another program ({exc}), not an rbee queen. "
            "Stop that program, or run rbee on another port: RBEE_QUEEN_PORT=7900 rbee ..."
        ) from exc


def start_detached(client: QueenClient, out: Output, host: str | None = None,
                   insecure_no_auth: bool = False) -> QueenHealth:
    """Start `rbee queen start --foreground` in the background and wait until it answers."""
    logfile = paths.queen_log_file()
    port = _port(client.base_url)
    argv = [sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--port", str(port)]
    argv += ["--host", host] if host else []
    argv += ["--insecure-no-auth"] if insecure_no_auth else []
    with paths.open_private(logfile) as log:  # in the state folder, made 700
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    with out.err.status(f"starting the queen on port {port}…"):
        while time.monotonic() < deadline:
            health = probe(client)
            if health is not None:
                out.success(f"queen started on {client.base_url} (pid {health.pid}, log {logfile})")
                return health
            if proc.poll() is not None:
                # Another `rbee` may have started a queen at the same moment and won the port: give it
                # a few seconds to answer before calling this a failure.
                deadline = min(deadline, time.monotonic() + 5)
            time.sleep(0.1)
    if proc.poll() is not None:
        raise CLIError(f"the queen exited during start-up (code {proc.returncode}):\n"
                       + "\n".join(tail(logfile, 10)))
    raise CLIError(f"the queen did not answer within {START_TIMEOUT_S:.0f} s; see {logfile}")


def ensure_queen(client: QueenClient, out: Output, host: str | None = None,
                 insecure_no_auth: bool = False) -> QueenHealth:
    """A healthy queen of this CLI's version, started (or restarted) in the background if needed."""
    health = probe(client)
    if health is not None:
        if parse_version(health.version) < parse_version(current_version()):
            out.info(f"The running queen is v{health.version}, this CLI is v{current_version()}: "
                     "restarting the queen on the new version.")
            stop_queen(client, out, quiet=True)
        else:
            return health
    if not _is_local(client.base_url):
        raise CLIError(f"no queen answers at {client.base_url}; start it there with `rbee queen start`")
    return start_detached(client, out, host, insecure_no_auth)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_queen(client: QueenClient, out: Output, quiet: bool = False) -> bool:
    """Ask the queen to stop, fall back to SIGTERM; True when one was running."""
    health = probe(client)
    if health is None:
        return False
    try:
        client.post("/v1/admin/shutdown")
    except CLIError:
        if _is_local(client.base_url):
            with contextlib.suppress(ProcessLookupError):
                os.kill(health.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    with out.err.status("stopping the queen (and its workers)…"):
        while time.monotonic() < deadline:
            gone = not _alive(health.pid) if _is_local(client.base_url) else True
            if gone and probe(client) is None:
                if not quiet:
                    out.success(f"queen stopped (was pid {health.pid})")
                return True
            time.sleep(0.1)
    raise CLIError(f"the queen (pid {health.pid}) did not stop within 20 s")
