"""Running the queen in the foreground: access checks, port check, pid file, uvicorn (on a second port too, for
the Ollama API only, with RBEE_OLLAMA_PORT)."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from rbee.common import logs, paths, settings, tls
from rbee.common.daemon import PortInUseError, check_port_free, is_loopback, remove_pid_file, write_pid_file
from rbee.hive.catalog import CatalogError
from rbee.queen import keep_alive
from rbee.queen.app import create_app
from rbee.queen.guard import Access
from rbee.queen.state import QueenState

__all__ = ["PortInUseError", "StartRefused", "serve"]

log = logging.getLogger(__name__)


class StartRefused(RuntimeError):
    """The queen will not start as asked; the message says why and what to do."""


class _Server(uvicorn.Server):
    """uvicorn, but streams in flight end with an error event when the queen stops, instead of
    hanging until the graceful-shutdown timeout cuts them without a word."""

    def __init__(self, config: uvicorn.Config, state: QueenState) -> None:
        super().__init__(config)
        self._state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ended = self._state.forwarder.end_streams()
        if ended:
            log.info("stopping: ended %d stream(s) in flight with an error event", ended)
        await super().shutdown(sockets)


_SETTINGS: tuple[Callable[[], object], ...] = (
    settings.queen_port, settings.worker_slots, settings.worker_context, settings.max_context, settings.worker_threads,
    settings.memory_budget, settings.queue_limits, settings.max_replicas, settings.heartbeat_s,
    settings.hive_timeout_s, settings.max_body_bytes, settings.audit_retention_s, settings.usage_flush_s,
    settings.log_max_bytes, settings.hive_register_timeout_s, settings.ollama_port, settings.spread_bounds,
    settings.affinity,
)


def check_settings() -> None:
    """Every RBEE_* setting read once at start: a bad value stops the start with its name and what it must be,
    instead of turning each request into a 500 later."""
    for read in _SETTINGS:
        try:
            read()
        except ValueError as exc:  # SettingsError, or a size parse_size cannot read
            raise StartRefused(str(exc)) from None
    for name, value in (("RBEE_KEEP_ALIVE", settings.keep_alive_default()),
                        ("RBEE_KEY_MAX_KEEP_ALIVE", settings.key_max_keep_alive())):
        try:
            keep_alive.parse(value)
        except ValueError as exc:
            raise StartRefused(f"{name}={value!r}: {exc}") from None


def serve(host: str, port: int, insecure_no_auth: bool = False) -> None:
    """Run the queen until it is told to stop (SIGINT, SIGTERM or `POST /v1/admin/shutdown`).

    A queen asked to listen beyond loopback (`host`) needs API keys, or `insecure_no_auth`. A queen
    with enrolled hives listens on RBEE_QUEEN_NETWORK_HOST (default all addresses) even when `host`
    is loopback, so its hives reach it; without a key, network peers may then only send heartbeats.
    """
    logs.setup(os.environ.get("RBEE_LOG_LEVEL", "INFO"))
    check_settings()
    try:
        state = QueenState.create()
    except (tls.TLSError, CatalogError) as exc:  # RBEE_TLS_CA naming no file, a damaged catalog.sqlite
        raise StartRefused(str(exc)) from exc
    if not is_loopback(host):
        if insecure_no_auth:
            log.warning("INSECURE: listening on %s with --insecure-no-auth: anyone who can reach port %d may use "
                        "and manage this queen without a key", host, port)
        elif not state.keyring.has_keys():
            raise StartRefused(f"refusing to listen on {host} without API keys: anyone on the network could use "
                               "your GPUs. Create a key first (`rbee key create --name NAME`, which works with "
                               "the queen on 127.0.0.1), then start it with --host again. "
                               "(--insecure-no-auth skips this check, for a network you trust completely.)")
    elif state.db.enrolments():
        host = settings.queen_network_host()  # so its hives reach it; the guard limits what they may call
    try:
        files = tls.queen_files()
        if files is not None:
            files.server_context()  # a missing or broken certificate stops the start with the file's name
    except tls.TLSError as exc:
        raise StartRefused(str(exc)) from exc
    ollama_port = settings.ollama_port()
    if ollama_port == port:
        raise StartRefused(f"RBEE_OLLAMA_PORT={ollama_port} is the queen's own port, which serves the Ollama API "
                           "already; choose another (Ollama's is 11434) or leave it unset")
    check_port_free(host, port)
    if ollama_port is not None:
        try:
            check_port_free(host, ollama_port)
        except PortInUseError as exc:
            raise StartRefused(f"RBEE_OLLAMA_PORT={ollama_port}: {exc.strerror} (Ollama itself, maybe); stop what "
                               "listens there, or choose another port") from None
    app = create_app(state, on_shutdown=functools.partial(remove_pid_file, paths.queen_pid_file()),
                     access=Access(insecure_no_auth=insecure_no_auth), ollama_port=ollama_port, queen_port=port)
    state.listen_host = host
    server = _Server(_config(app, host, port, files), state)
    app.state.server = server
    write_pid_file(paths.queen_pid_file())
    log.info("queen listening on %s://%s:%d (pid %d)", "https" if files else "http", host, port, os.getpid())
    if ollama_port is None:
        server.run()
        return
    log.info("the Ollama API also on port %d (RBEE_OLLAMA_PORT)", ollama_port)
    server.run(sockets=[_listening(host, port), _listening(host, ollama_port)])


def _config(app: ASGIApp, host: str, port: int, files: tls.TLSFiles | None) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        loop="auto", http="auto", timeout_graceful_shutdown=5,
        # the caller's address is the connection's (the guard, the audit log): an X-Forwarded-For from a local
        # process is not believed, and no middleware reads headers for it on every request
        proxy_headers=False,
        ssl_certfile=files.cert if files else None, ssl_keyfile=files.key if files else None,
    )


def _listening(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), for uvicorn to serve on beside another (it listens on it itself)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
