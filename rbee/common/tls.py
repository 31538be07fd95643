"""TLS between rbee's machines: a small cluster CA, certificates for the queen and each hive, pinned contexts.

`rbee tls init` makes the CA on the queen's machine (`~/.config/rbee/tls/ca.pem`, its key `ca.key`, mode
600) and a certificate for the queen; `rbee hive install` gives each hive its own certificate, for the
address the queen reaches it at, and the CA certificate. Clients then trust that CA and nothing else:
a certificate from any other CA, even a public one, is refused (pinning).

    queen's machine: tls/ca.pem, tls/ca.key, tls/queen.pem, tls/queen.key
    a hive's machine: tls/ca.pem, tls/hive.pem, tls/hive.key     (the hive's workers use the hive's pair)

This module holds what the daemons use (the files, the contexts: the standard library's ssl); making the CA and
certificates (the cryptography package, ~8 MB a daemon need not keep) is in rbee.common.tls_ca, for the CLI.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from rbee.common import paths


class TLSError(RuntimeError):
    """A certificate or key is missing or unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class TLSFiles:
    """A certificate, its key, and the CA that certificates of the other side must come from."""

    cert: Path
    key: Path
    ca: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load the certificate {self.cert} and key {self.key}: {exc}") from exc
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.ca)


def client_context(ca: Path) -> ssl.SSLContext:
    """Verify servers against `ca` only: the cluster's own CA is pinned, the system's roots are not used."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load the cluster CA {ca}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def pinned_context(certificate: str) -> ssl.SSLContext:
    """Verify a server against the one certificate the cluster CA issued to it (an allow-list of one): a
    certificate the same CA issued to another or an uninstalled hive is refused, as is any other."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=certificate)
    except (ValueError, TypeError, ssl.SSLError) as exc:  # TypeError: text that is not ASCII
        raise TLSError(f"the certificate recorded for this hive cannot be used: {exc}") from exc
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def cluster_ca() -> Path:
    return Path(os.environ.get("RBEE_TLS_CA") or paths.tls_dir() / "ca.pem")


def cluster_client_context() -> ssl.SSLContext | None:
    """How the queen checks its hives and their workers: against the cluster CA, when there is one."""
    ca = cluster_ca()
    if os.environ.get("RBEE_TLS_CA") and not ca.is_file():
        raise TLSError(f"RBEE_TLS_CA names {ca}, which is not a file")
    return client_context(ca) if ca.is_file() else None


def queen_files() -> TLSFiles | None:
    """The queen's TLS files: RBEE_TLS_CERT and RBEE_TLS_KEY (with RBEE_TLS_CA), else the cluster's from
    `rbee tls init`; None when TLS is off."""
    cert, key = os.environ.get("RBEE_TLS_CERT"), os.environ.get("RBEE_TLS_KEY")
    if cert or key:
        if not (cert and key):
            raise TLSError("set both RBEE_TLS_CERT and RBEE_TLS_KEY (or neither)")
        return TLSFiles(Path(cert), Path(key), cluster_ca())
    folder = paths.tls_dir()
    if (folder / "queen.pem").is_file():
        return TLSFiles(folder / "queen.pem", folder / "queen.key", folder / "ca.pem")
    return None


def certificate_problem(exc: BaseException) -> str | None:
    """What a failed TLS handshake says, when `exc` (or what caused it) is one; None for other failures."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"its certificate was refused: certificate verify failed ({seen.verify_message or seen.reason})"
        if isinstance(seen, ssl.SSLError):
            return f"the TLS handshake failed ({seen.reason or seen})"
        text = str(seen)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return f"its certificate was refused: {text[:200]}"
        seen = seen.__cause__ or seen.__context__
    return None
