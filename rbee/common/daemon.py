"""What the queen and hive daemons share: the port check, loopback test and their pid files."""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import socket
from pathlib import Path

from rbee.common import paths


class PortInUseError(OSError):
    """Something else already listens on the daemon's port."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) can only be reached from this machine (asked of every request's
    peer: the answers for the last few are kept)."""
    return _is_loopback(host) if len(host) <= 64 else _is_loopback.__wrapped__(host)


@functools.lru_cache(maxsize=256)
def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_address(a: str, b: str) -> bool:
    """Whether two IP literals name one address (an IPv4 address and its IPv6-mapped form do)."""
    try:
        first, second = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped:
        first = first.ipv4_mapped
    if isinstance(second, ipaddress.IPv6Address) and second.ipv4_mapped:
        second = second.ipv4_mapped
    return first == second


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(exc.errno, f"port {port} on {host} is already in use") from exc
            raise


def write_pid_file(path: Path) -> None:
    paths.ensure(path.parent)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)


def remove_pid_file(path: Path) -> None:
    """Remove the pid file if it is still ours.

    Called from the app's shutdown: uvicorn re-raises SIGTERM after a graceful exit, so code after
    server.run() (or a `finally` around it) never runs.
    """
    with contextlib.suppress(FileNotFoundError):
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
