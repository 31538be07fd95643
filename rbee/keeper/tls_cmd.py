"""`rbee tls init|rotate|status`: the cluster CA, and HTTPS for the queen and the hives."""

from __future__ import annotations

import asyncio
import shutil
from typing import Annotated

import typer
from cryptography import x509

from rbee.common import paths, settings, tls, tls_ca
from rbee.keeper import hives_conf
from rbee.keeper.client import QueenClient
from rbee.keeper.context import App
from rbee.keeper.daemon import ensure_queen, probe, stop_queen
from rbee.keeper.hive_install import Installer
from rbee.keeper.output import CLIError
from rbee.keeper.ssh import SSHError

app = typer.Typer(help="TLS between your machines: a cluster CA, certificates for the queen and every hive.",
                  no_args_is_help=True)


def _local_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{settings.queen_port()}"


@app.command()
def init(force: Annotated[bool, typer.Option("--force", help="Make a new CA (then `rbee tls rotate` gives "
                                                             "every installed hive a new certificate).")] = False,
         ) -> None:
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
        made = tls_ca.ensure_ca()
        tls_ca.issue_queen_cert()
    except tls.TLSError as exc:
        raise CLIError(str(exc)) from exc
    ctx.out.success(("made the cluster CA " if made else "the cluster CA is ") + str(tls.cluster_ca()))
    ctx.out.success(f"the queen's certificate names: {', '.join(sorted(tls_ca.names_in(folder / 'queen.pem')))}")
    if running is not None:
        stop_queen(ctx.client, ctx.out, quiet=True)
        ensure_queen(QueenClient(_local_url("https")), ctx.out)
    ctx.out.info(f"The queen now speaks HTTPS: clients use https://localhost:{settings.queen_port()}/v1 and trust "
                 f"{tls.cluster_ca()} (for example SSL_CERT_FILE or REQUESTS_CA_BUNDLE). Run `rbee tls rotate` "
                 "to give the hives installed before a certificate from this CA.")


@app.command()
def rotate(aliases: Annotated[list[str] | None, typer.Argument(
        help="The hives to give new certificates (default: every hive the queen has enrolled).")] = None) -> None:
    """Re-issue certificates from the current cluster CA to installed hives over SSH and restart them.

    Run it after `rbee tls init --force`: hives installed before keep their token, models and settings, and
    no reinstall is needed.
    """
    ctx = App()
    if tls.queen_files() is None:
        raise CLIError("TLS is off: `rbee tls init` first.")
    client = ctx.queen()
    targets = aliases or [h["alias"] for h in client.get("/v1/hives") if h["alias"] != "localhost"]
    if not targets:
        ctx.out.info("no hives are enrolled: nothing to rotate")
        return
    failed = []
    for alias in targets:
        try:
            host = hives_conf.lookup(alias)
        except (hives_conf.UnknownHost, hives_conf.HivesConfError) as exc:
            ctx.out.warn(f"{alias}: {exc}")
            failed.append(alias)
            continue
        installer = Installer(host, client, ctx.out)
        try:
            asyncio.run(_rotate(installer))
        except (CLIError, SSHError) as exc:
            ctx.out.warn(f"{alias}: {exc}")
            failed.append(alias)
    if failed:
        raise CLIError(f"the certificates of {', '.join(failed)} were not rotated (see above); "
                       "fix what is said and run `rbee tls rotate` again")


async def _rotate(installer: Installer) -> None:
    try:
        await installer.rotate_certificates()
    finally:
        await installer.close()


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
    ctx.out.out.print(f"names: {', '.join(sorted(tls_ca.names_in(files.cert)))}")
