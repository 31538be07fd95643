"""Running the queen in the foreground: port check, pid file, uvicorn."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from rbee.common import logs, paths
from rbee.queen.app import create_app

log = logging.getLogger(__name__)


class PortInUseError(OSError):
    """Something else already listens on the queen's port."""


def pid_file() -> Path:
    return paths.state_dir() / "queen.pid"


def log_file() -> Path:
    return paths.state_dir() / "queen.log"


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(exc.errno, f"port {port} on {host} is already in use") from exc
            raise


@contextlib.contextmanager
def _pid_file() -> Iterator[None]:
    path = pid_file()
    paths.ensure(path.parent)
    path.write_text(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()


def serve(host: str, port: int) -> None:
    """Run the queen until it is told to stop (SIGINT, SIGTERM or `POST /v1/admin/shutdown`)."""
    logs.setup(os.environ.get("RBEE_LOG_LEVEL", "INFO"))
    check_port_free(host, port)
    app = create_app()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        loop="auto", http="auto", timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    app.state.server = server
    with _pid_file():
        log.info("queen listening on http://%s:%d (pid %d)", host, port, os.getpid())
        server.run()
