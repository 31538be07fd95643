"""The forwarder's sockets to workers (rbee/queen/proxy.py); forwarding itself is tested end to end."""

from __future__ import annotations

import socket

import pytest

from rbee.common import upstream_wire
from rbee.queen import proxy


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
def test_a_worker_socket_gives_up_on_unacknowledged_data_within_the_connect_timeout() -> None:
    forwarder = proxy.Forwarder()
    sock = upstream_wire.tcp_socket(socket.AF_INET, forwarder._pool._user_timeout_s)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(proxy.WORKER_CONNECT_S * 1000)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    finally:
        sock.close()
