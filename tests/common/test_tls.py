"""The cluster CA and its certificates: real TLS handshakes on loopback."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.common import tls, tls_ca


def _make_ca(folder: Path) -> Path:
    assert tls_ca.ensure_ca(folder)
    assert not tls_ca.ensure_ca(folder)  # kept, not remade
    return folder


def _leaf(ca: Path, names: list[str], out: Path) -> tls.TLSFiles:
    cert, key = tls_ca.issue("test", names, ca)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaf.pem").write_bytes(cert)
    (out / "leaf.key").write_bytes(key)
    return tls.TLSFiles(out / "leaf.pem", out / "leaf.key", ca / "ca.pem")


def _serve_once(files: tls.TLSFiles) -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    ctx = files.server_context()

    def accept() -> None:
        conn, _ = server.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.sendall(b"hello")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield port
    server.close()
    thread.join(5)


def _handshake(port: int, ctx: ssl.SSLContext, name: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as conn:
        return conn.recv(5)


def test_the_ca_key_is_private_and_certificates_name_their_hosts(tmp_path: Path) -> None:
    ca = _make_ca(tmp_path / "ca")
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    files = _leaf(ca, ["127.0.0.1", "gpu-box", "10.0.0.7"], tmp_path / "leaf")
    assert tls_ca.names_in(files.cert) == {"127.0.0.1", "gpu-box", "10.0.0.7"}


def test_a_certificate_from_the_cluster_ca_is_accepted(tmp_path: Path) -> None:
    ca = _make_ca(tmp_path / "ca")
    files = _leaf(ca, ["127.0.0.1"], tmp_path / "leaf")
    for port in _serve_once(files):
        assert _handshake(port, tls.client_context(ca / "ca.pem")) == b"hello"


def test_another_ca_is_refused_even_with_the_right_name(tmp_path: Path) -> None:
    ours = _make_ca(tmp_path / "ours")
    theirs = _make_ca(tmp_path / "theirs")
    impostor = _leaf(theirs, ["127.0.0.1"], tmp_path / "impostor")
    for port in _serve_once(impostor):
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, tls.client_context(ours / "ca.pem"))


def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    ca = _make_ca(tmp_path / "ca")
    files = _leaf(ca, ["10.9.9.9"], tmp_path / "leaf")
    for port in _serve_once(files):
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, tls.client_context(ca / "ca.pem"))


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(tls.TLSError, match=r"nope\.pem"):
        tls.TLSFiles(tmp_path / "nope.pem", tmp_path / "nope.key", tmp_path / "ca.pem").server_context()
    with pytest.raises(tls.TLSError, match="cannot be read"):
        tls_ca.issue("x", ["a"], tmp_path / "no-ca-here")


def test_a_refused_certificate_is_named_as_such_through_httpx(tmp_path: Path) -> None:
    import httpx

    ours = _make_ca(tmp_path / "ours")
    theirs = _make_ca(tmp_path / "theirs")
    impostor = _leaf(theirs, ["127.0.0.1"], tmp_path / "impostor")
    for port in _serve_once(impostor):
        with pytest.raises(httpx.ConnectError) as failed:
            httpx.get(f"https://127.0.0.1:{port}/", verify=tls.client_context(ours / "ca.pem"), timeout=5)
        problem = tls.certificate_problem(failed.value)
        assert problem is not None and problem.startswith("its certificate was refused")
    assert tls.certificate_problem(httpx.ConnectError("[Errno 111] Connection refused")) is None


def test_a_pinned_context_takes_only_the_certificate_issued_to_that_hive(tmp_path: Path) -> None:
    ca = _make_ca(tmp_path / "ca")
    hive = _leaf(ca, ["127.0.0.1"], tmp_path / "hive")
    uninstalled = _leaf(ca, ["127.0.0.1"], tmp_path / "old")  # same CA, same address: another hive's, or revoked
    pinned = tls.pinned_context(hive.cert.read_text())
    for port in _serve_once(hive):
        assert _handshake(port, pinned) == b"hello"
    for port in _serve_once(uninstalled):
        assert _handshake(port, tls.client_context(ca / "ca.pem")) == b"hello"  # the CA alone would take it
    for port in _serve_once(uninstalled):
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, pinned)
    for garbage in ("not a certificate", "-----BEGIN CERTIFICATE-----\né\n-----END CERTIFICATE-----"):
        with pytest.raises(tls.TLSError, match="cannot be used"):
            tls.pinned_context(garbage)
