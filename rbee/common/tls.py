"""TLS between rbee's machines: a small cluster CA, certificates for the queen and each hive, pinned contexts.

`rbee tls init` makes the CA on the queen's machine (`~/.config/rbee/tls/ca.pem`, its key `ca.key`, mode
600) and a certificate for the queen; `rbee hive install` gives each hive its own certificate, for the
address the queen reaches it at, and the CA certificate. Clients then trust that CA and nothing else:
a certificate from any other CA, even a public one, is refused (pinning).

    queen's machine: tls/ca.pem, tls/ca.key, tls/queen.pem, tls/queen.key
    a hive's machine: tls/ca.pem, tls/hive.pem, tls/hive.key     (the hive's workers use the hive's pair)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rbee.common import paths

CA_YEARS = 10
LEAF_YEARS = 2


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


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise TLSError(f"the cluster CA in {folder} cannot be read ({exc}); `rbee tls init --force` makes a "
                       "new one (then reinstall every hive)") from exc
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def ensure_ca(folder: Path | None = None) -> bool:
    """Make the cluster CA in `folder` unless it is there; True when it was made."""
    folder = folder or paths.tls_dir()
    if (folder / "ca.pem").is_file() and (folder / "ca.key").is_file():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rbee cluster CA ({socket.gethostname()})")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths.write_private(folder / "ca.key", _key_pem(key))
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(common_name: str, names: list[str], folder: Path | None = None) -> tuple[bytes, bytes]:
    """A certificate (PEM) and its key (PEM) for `names` (host names and addresses), signed by the CA."""
    ca_cert, ca_key = _load_ca(folder or paths.tls_dir())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * LEAF_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(_san(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def names_in(cert_file: Path) -> set[str]:
    """The host names and addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def local_names() -> list[str]:
    """This machine's names and addresses: what clients may call the queen by."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family in (socket.AF_INET, socket.AF_INET6) and "%" not in a.address:
                names.append(a.address)
    return names


def issue_queen_cert(extra: list[str] | None = None, folder: Path | None = None) -> Path:
    """(Re)issue the queen's certificate for this machine's names plus `extra`; returns its path."""
    folder = folder or paths.tls_dir()
    cert, key = issue("rbee queen", local_names() + (extra or []), folder)
    paths.write_private(folder / "queen.key", key)
    (folder / "queen.pem").write_bytes(cert)
    return folder / "queen.pem"


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
