"""The uid of a loopback TCP peer, read from /proc/net/tcp{,6}."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.queen import peer
from tests.fixtures.other_user import SYSTEM_PYTHON, OtherUser

linux_only = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_addresses_are_written_as_the_kernel_writes_them() -> None:
    local, table = peer.proc_address("127.0.0.1", 7833)
    assert table == "tcp"
    assert local == ("0100007F:1E99" if sys.byteorder == "little" else "7F000001:1E99")
    six, table6 = peer.proc_address("::1", 80)
    assert table6 == "tcp6" and six.endswith(":0050") and len(six) == 32 + 5
    with pytest.raises(ValueError):
        peer.proc_address("localhost", 1)


@linux_only
def test_a_connection_of_this_process_is_this_user_and_held_here(listener: socket.socket) -> None:
    with socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            found = peer.peer_of(client.getsockname(), accepted.getsockname())
            assert found is not None and found.uid == os.getuid()
            assert peer.held_here(found.inode)
            # the mirror row (the accepted socket) is not the client's
            assert peer.peer_of(accepted.getsockname(), client.getsockname()) is not None
            assert peer.peer_of(("127.0.0.1", 1), accepted.getsockname()) is None


@linux_only
def test_a_connection_of_another_user_is_that_user(listener: socket.socket, other_user: OtherUser) -> None:
    host, port = listener.getsockname()
    code = (f"import socket, time; s = socket.create_connection(('{host}', {port})); "
            "s.recv(1); s.close()")
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", code], user=other_user.uid, group=other_user.uid,
                            extra_groups=[], cwd="/")
    try:
        listener.settimeout(20)
        accepted, client = listener.accept()
        with accepted:
            found = peer.peer_of(client, accepted.getsockname())
            assert found is not None and found.uid == other_user.uid
            assert not peer.held_here(found.inode)
            accepted.sendall(b"x")
    finally:
        proc.wait(20)


def test_rows_without_a_live_socket_are_nobody(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    local, _ = peer.proc_address("127.0.0.1", 40000)
    remote, _ = peer.proc_address("127.0.0.1", 7833)
    rows = {
        "06": f"   0: {local} {remote} 06 00000000:00000000 03:00000000 00000000     0        0 0 3\n",  # TIME_WAIT
        "01": f"   0: {local} {remote} 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n",
    }
    for state, row in rows.items():
        (tmp_path / "tcp").write_text(header + row)
        found = peer.peer_of(("127.0.0.1", 40000), ("127.0.0.1", 7833), proc_net=tmp_path)
        assert found == (None if state == "06" else peer.Peer(uid=1000, inode=4242))


def test_without_proc_nobody_is_known(tmp_path: Path) -> None:
    assert peer.peer_of(("127.0.0.1", 40000), ("127.0.0.1", 7833), proc_net=tmp_path / "missing") is None
    assert peer.peer_of(("127.0.0.1", 40000), ("::1", 7833)) is None  # not one connection
    assert not peer.held_here(1, fd_dir=tmp_path / "missing")


@linux_only
def test_an_ipv6_loopback_connection_is_found_too() -> None:
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server, socket.create_connection(server.getsockname()[:2]) as client:
        accepted, _ = server.accept()
        with accepted:
            found = peer.peer_of(client.getsockname()[:2], accepted.getsockname()[:2])
            assert found is not None and found.uid == os.getuid() and peer.held_here(found.inode)
