"""`rbee tls init|status`: the cluster CA, and HTTPS for the queen and the hives."""

from __future__ import annotations

import shutil
from typing import Annotated

import typer
from cryptography import x509

from rbee.common import paths, settings, tls
from rbee.keeper.client import QueenClient
from rbee.keeper.context import App
from rbee.keeper.daemon import ensure_queen, probe, stop_queen
from rbee.keeper.output import CLIError

app = typer.Typer(help="TLS between your machines: a cluster CA, certificates for the queen and every hive.",
                  no_args_is_help=True)


def _local_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{settings.queen_port()}"


@app.command()
def init(force: Annotated[bool, typer.Option("--force", help="Make a new CA (every hive must then be "
                                                             "reinstalled).")] = False) -> None:
    """Turn TLS on: make the cluster CA and the queen's certificate, and restart a running queen on HTTPS.

    Hives installed from then on (`rbee hive install`, also to repair one) get their own certificate;
    their API and their workers speak HTTPS, and each side accepts only certificates from this CA.
    """
    ctx = App(queen_url=_local_url("https" if settings.queen_tls() else "http"))
    running = probe(ctx.client)
    folder = paths.tls_dir()
    if force and folder.exists():
        shutil.rmtree(folder)
    try:
        made = tls.ensure_ca()
        tls.issue_queen_cert()
    except tls.TLSError as exc:
        raise CLIError(str(exc)) from exc
    ctx.out.success(("made the cluster CA " if made else "the cluster CA is ") + str(tls.cluster_ca()))
    ctx.out.success(f"the queen's certificate names: {', '.join(sorted(tls.names_in(folder / 'queen.pem')))}")
    if running is not None:
        stop_queen(ctx.client, ctx.out, quiet=True)
        ensure_queen(QueenClient(_local_url("https")), ctx.out)
    ctx.out.info(f"The queen now speaks HTTPS: clients use https://localhost:{settings.queen_port()}/v1 and trust "
                 f"{tls.cluster_ca()} (for example SSL_CERT_FILE or REQUESTS_CA_BUNDLE). Run `rbee hive install "
                 "ALIAS` again for each hive installed before, so it gets a certificate.")


@app.command()
def status() -> None:
    """Whether TLS is on, the CA, and the names on the queen's certificate."""
    ctx = App()
    files = tls.queen_files()
    if files is None:
        ctx.out.out.print("TLS: off (`rbee tls init` turns it on)")
        return
    for label, path in (("CA", files.ca), ("queen certificate", files.cert)):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CLIError(f"{label} {path} cannot be read: {exc}") from exc
        ctx.out.out.print(f"{label}: {path} (valid until {cert.not_valid_after_utc:%Y-%m-%d})")
    ctx.out.out.print(f"names: {', '.join(sorted(tls.names_in(files.cert)))}")
