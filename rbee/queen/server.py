"""Running the queen in the foreground: port check, pid file, uvicorn."""

from __future__ import annotations

import functools
import logging
import os

import uvicorn

from rbee.common import logs, paths, settings
from rbee.common.daemon import PortInUseError, check_port_free, remove_pid_file, write_pid_file
from rbee.queen.app import create_app
from rbee.queen.db import QueenDB

__all__ = ["PortInUseError", "serve"]

log = logging.getLogger(__name__)


def serve(host: str, port: int) -> None:
    """Run the queen until it is told to stop (SIGINT, SIGTERM or `POST /v1/admin/shutdown`).

    A queen with enrolled hives listens on RBEE_QUEEN_NETWORK_HOST (default all addresses) instead of
    `host`, so the hives can reach it; network peers may only register and send heartbeats.
    """
    logs.setup(os.environ.get("RBEE_LOG_LEVEL", "INFO"))
    for check in (settings.worker_slots, settings.worker_context, settings.worker_threads):
        check()  # a bad RBEE_WORKER_* value stops the start with a clear message, not the first request
    if QueenDB(paths.queen_db_file()).enrolments():
        host = settings.queen_network_host()  # so its hives reach it; the guard limits what they may call
    check_port_free(host, port)
    app = create_app(on_shutdown=functools.partial(remove_pid_file, paths.queen_pid_file()))
    app.state.queen.listen_host = host
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        loop="auto", http="auto", timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    app.state.server = server
    write_pid_file(paths.queen_pid_file())
    log.info("queen listening on http://%s:%d (pid %d)", host, port, os.getpid())
    server.run()
