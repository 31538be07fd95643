"""Which Unix user is on the other end of a loopback TCP connection (Linux, from /proc/net/tcp{,6}).

`SO_PEERCRED` answers this for Unix sockets only. For TCP, the kernel lists every socket of this network
namespace in /proc/net/tcp (IPv4) and /proc/net/tcp6 (IPv6), one row each, with the user that created it
(`uid`) and its inode. The client's socket is the row whose *local* address is the client's ip:port and
whose *remote* address is the server's ip:port (the queen's accepted socket is the mirror row).

    peer_of(client, server)   the client socket's uid and inode, or None (no /proc: macOS, BSD; or no row)
    held_here(inode)          whether this very process holds that socket (the queen calling itself)

A row without an inode (a socket its process already closed: TIME_WAIT, orphaned FIN_WAIT) lists uid 0
whoever opened it, so it never counts as anyone. Nothing is cached: a cached answer could outlive the
connection it was about, and a port can be reused by another user. Callers run these in a thread; each is
one read of a /proc file (or one listing of /proc/self/fd).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Peer", "held_here", "peer_of", "proc_address"]

PROC_NET = Path("/proc/net")
ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2 = "01", "08", "04", "05"
_LIVE_STATES = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2})


@dataclass(frozen=True)
class Peer:
    uid: int
    inode: int


def proc_address(ip: str, port: int) -> tuple[str, str]:
    """`ip:port` as /proc/net/tcp{,6} writes it ("0100007F:1E99" on a little-endian machine), and the
    table it is in; `ValueError` for something that is not an IP address."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        raw = socket.inet_pton(family, ip.split("%", 1)[0])
    except OSError as exc:
        raise ValueError(f"{ip!r} is not an IP address") from exc
    if family == socket.AF_INET6:
        words = struct.unpack("=4I", raw)  # each 32-bit word in the machine's own byte order
        return "".join(f"{w:08X}" for w in words) + f":{port:04X}", "tcp6"
    return f"{struct.unpack('=I', raw)[0]:08X}:{port:04X}", "tcp"


def _find(table: Path, local: str, remote: str) -> Peer | None:
    try:
        with table.open("r", encoding="ascii", errors="replace") as rows:
            next(rows, None)  # the header
            for row in rows:
                cols = row.split()
                # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
                if len(cols) >= 10 and cols[1] == local and cols[2] == remote:
                    inode = int(cols[9])
                    if inode == 0 or cols[3] not in _LIVE_STATES:
                        return None
                    return Peer(uid=int(cols[7]), inode=inode)
    except (OSError, ValueError):
        return None
    return None


def peer_of(client: tuple[str, int], server: tuple[str, int], proc_net: Path = PROC_NET) -> Peer | None:
    """The user and inode of the client's end of the TCP connection client -> server, when this machine
    can say (Linux with /proc), else None."""
    try:
        local, table = proc_address(*client)
        remote, server_table = proc_address(*server)
    except ValueError:
        return None
    if table != server_table:
        return None
    return _find(proc_net / table, local, remote)


def held_here(inode: int, fd_dir: Path = Path("/proc/self/fd")) -> bool:
    """Whether a socket with this inode is open in this process (its own outgoing connection)."""
    wanted = f"socket:[{inode}]"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(fd_dir / name) == wanted:
                return True
        except OSError:
            continue
    return False
