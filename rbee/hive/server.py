"""Running a remote hive in the foreground (what its service manager starts)."""

from __future__ import annotations

import functools
import logging
import os

import uvicorn

from rbee.common import logs, paths
from rbee.common.daemon import check_port_free, remove_pid_file, write_pid_file
from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig

log = logging.getLogger(__name__)

LISTEN_HOST = "0.0.0.0"  # every route needs the join token; workers bind to the configured address only


def serve(config: HiveConfig) -> None:
    """Run the hive until SIGTERM/SIGINT; raises `PortInUseError` when its port is taken."""
    logs.setup(os.environ.get("RBEE_LOG_LEVEL", "INFO"))
    config.apply_to_environment()
    check_port_free(LISTEN_HOST, config.port)
    pid_file = paths.hive_pid_file()
    app = create_app(config, on_shutdown=functools.partial(remove_pid_file, pid_file))

    files = config.tls_files()
    if files is not None:
        files.server_context()  # a missing or broken certificate stops the start with the file's name
    server = uvicorn.Server(uvicorn.Config(
        app, host=LISTEN_HOST, port=config.port, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
        proxy_headers=False,  # the peer's address is the connection's: no X-Forwarded-For
        ssl_certfile=files.cert if files else None, ssl_keyfile=files.key if files else None,
    ))
    write_pid_file(pid_file)
    log.info("hive '%s' listening on port %d, workers on %s, queen at %s (pid %d)", config.alias, config.port,
             config.address, config.queen_url, os.getpid())
    server.run()
