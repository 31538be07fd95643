"""The cluster CA and the certificates it signs (see rbee.common.tls): made by the CLI (`rbee tls init`,
`rbee hive install`), never by a running daemon, which only reads the files."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rbee.common import paths
from rbee.common.tls import TLSError

CA_YEARS = 10
LEAF_YEARS = 2


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


def channel_pair(spread: str, end: str, days: int = 30) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) and its key (PEM) for one end of a spread's RPC channel (see
    rbee/hive/rpc_channel.py). No CA signs it: the other end pins this exact certificate, so it works the
    same whether the cluster has a CA or not, and it opens nothing but that spread's channel."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rbee channel {spread} {end}"[:64])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
