"""The guard's rules that need no running queen: who the queen's own user is, and which origins are its own."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.types import Scope

from rbee.queen.guard import _is_own_origin, _peer_is_queen_user

linux_only = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")


def _scope(client: tuple[str, int], server: tuple[str, int]) -> Scope:
    return {"type": "http", "client": client, "server": server, "scheme": "http"}


@linux_only
def test_a_process_of_the_queens_user_is_the_owner_but_the_queen_itself_is_not() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        host, port = server.getsockname()
        # the queen's own outgoing connection (a worker URL that points back at it): not a client
        with socket.create_connection((host, port)) as own:
            accepted, peer = server.accept()
            with accepted:
                assert not _peer_is_queen_user(_scope(peer, accepted.getsockname()))
            own.close()
        # another process of the same user: the owner
        child = subprocess.Popen([sys.executable, "-c", f"import socket; s = socket.create_connection(('{host}', "
                                  f"{port})); s.recv(1)"])
        try:
            server.settimeout(20)
            accepted, peer = server.accept()
            with accepted:
                assert _peer_is_queen_user(_scope(peer, accepted.getsockname()))
                accepted.sendall(b"x")
        finally:
            child.wait(20)


def test_without_a_peer_address_nobody_is_the_owner() -> None:
    assert not _peer_is_queen_user({"type": "http", "client": None, "server": ("127.0.0.1", 7833)})


@pytest.mark.parametrize("origin, host, own", [
    ("http://localhost:7833", "localhost:7833", True),
    ("http://127.0.0.1:7833", "127.0.0.1:7833", True),
    ("http://[::1]:7833", "[::1]:7833", True),
    ("http://localhost:8000", "localhost:8000", True),  # an SSH tunnel's port, the one the browser used
    ("http://localhost:3000", "localhost:7833", False),  # another program's page
    ("http://localhost", "localhost:7833", False),
    ("https://localhost:7833", None, True),
    ("http://evil.example:7833", "localhost:7833", False),
    ("null", "localhost:7833", False),
    ("http://localhost:99999", "localhost:7833", False),
    ("http://localhost:x", "localhost:7833", False),
])
def test_only_the_queens_own_origin_is_its_own(origin: str, host: str | None, own: bool) -> None:
    assert _is_own_origin(origin, host, _scope(("127.0.0.1", 50000), ("127.0.0.1", 7833))) is own
