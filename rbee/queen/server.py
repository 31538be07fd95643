"""Running the queen in the foreground: port check, pid file, uvicorn."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket

import uvicorn

from rbee.common import logs, paths, settings
from rbee.queen.app import create_app

log = logging.getLogger(__name__)


class PortInUseError(OSError):
    """Something else already listens on the queen's port."""


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(exc.errno, f"port {port} on {host} is already in use") from exc
            raise


def _write_pid_file() -> None:
    path = paths.queen_pid_file()
    paths.ensure(path.parent)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)


def _remove_pid_file() -> None:
    # Called from the app's shutdown: uvicorn re-raises SIGTERM after a graceful exit, so code after
    # server.run() (or a `finally` around it) never runs.
    path = paths.queen_pid_file()
    with contextlib.suppress(FileNotFoundError):
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()


def serve(host: str, port: int) -> None:
    """Run the queen until it is told to stop (SIGINT, SIGTERM or `POST /v1/admin/shutdown`)."""
    logs.setup(os.environ.get("RBEE_LOG_LEVEL", "INFO"))
    for check in (settings.worker_slots, settings.worker_context, settings.worker_threads):
        check()  # a bad RBEE_WORKER_* value stops the start with a clear message, not the first request
    check_port_free(host, port)
    app = create_app(on_shutdown=_remove_pid_file)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        loop="auto", http="auto", timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    app.state.server = server
    _write_pid_file()
    log.info("queen listening on http://%s:%d (pid %d)", host, port, os.getpid())
    server.run()
