"""What the queen believes of a hive's report: the checks that make a hive a peer of limited trust.

A hive says where it is, which models it holds and which workers it runs. The queen

  1. takes its address only if the report came from there, and from where the installer found the
     machine when it recorded one (a join token is bound to its hive's alias and address);
  2. refuses plain HTTP from a hive once the cluster has a CA (a downgrade would put prompts and keys
     in clear on the network, or on a local port another user may hold);
  3. takes a worker only if it is this hive's, listed once, and serves a model of this hive's catalog;
  4. builds each worker's URL itself from the hive's address and the worker's port, so no path, query,
     user or host of the hive's choosing reaches a request the queen makes. A worker the hive fronts
     (an engine with no key or TLS of its own, rbee/hive/front.py) is reached on the hive's own port, at
     that worker's own front path and no other.

Sizes and numbers are bounded by the contracts (rbee/contracts/bounds.py) before anything here runs.
These functions are pure: the route turns their errors into answers, and logs them with the real peer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rbee.common.daemon import same_address
from rbee.contracts.hives import HiveReport, HostedWorker
from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import front_path
from rbee.queen.errors import InvalidRequest, QueenError

_WORKER_URL = re.compile(r"^(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.%]+\]|[0-9.]+):(?P<port>\d{1,5})"
                         r"(?P<path>/v1/workers/[^/?#]+/engine)?/?$")


class ReportRefused(QueenError):
    """A report that claims what its hive cannot be: another machine's address."""

    status = 403
    code = "hive_report_refused"


def check_origin(report: HiveReport, peer: str, enrolled: str | None) -> None:
    """(1) The claimed address is the peer's, and the installer's when it recorded one."""
    if not same_address(report.address, peer):
        raise ReportRefused(f"hive '{report.alias}' says it is at {report.address} but its report came from "
                            f"{peer}; a hive is reached where it connects from. If the machine's address changed, "
                            f"re-run `rbee hive install {report.alias}` on the queen's machine.", param="address")
    if enrolled is not None and not same_address(report.address, enrolled):
        raise ReportRefused(f"the join token of hive '{report.alias}' was issued for {enrolled}, not {peer}; "
                            f"re-run `rbee hive install {report.alias}` if the machine moved.", param="address")


def check_tls(report: HiveReport, tls_required: bool) -> None:
    """(2) No plain HTTP to a hive once the cluster has a CA, loopback included (another local user could
    listen there and read prompts and worker keys)."""
    if tls_required and not report.tls:
        raise InvalidRequest(f"This queen uses TLS and hive '{report.alias}' does not: re-run "
                             f"`rbee hive install {report.alias}` on the queen's machine to give it a certificate.",
                             param="tls")


def worker_url(report: HiveReport, port: int) -> str:
    """(4) Where a worker of this hive is reached: built here, from validated parts only."""
    host = f"[{report.address}]" if ":" in report.address else report.address
    return f"{'https' if report.tls else 'http'}://{host}:{port}"


def trusted_worker(report: HiveReport, hosted: HostedWorker,
                   models: Sequence[ModelEntry] | None = None) -> HostedWorker:
    """(3, 4) The worker as the queen will use it (its URL rebuilt), or an InvalidRequest saying why not.
    `models`: what it may serve (the report's catalog unless given)."""
    info = hosted.info
    if info.hive != report.alias or not info.id.startswith(f"{report.alias}-"):
        raise InvalidRequest(f"hive '{report.alias}' reports worker {info.id} of hive '{info.hive}': a hive reports "
                             "only its own workers, named after it", param="workers")
    if not any(m.name == hosted.entry.name and m.path == hosted.entry.path
               for m in (report.models if models is None else models)):
        raise InvalidRequest(f"hive '{report.alias}' reports worker {info.id} serving '{hosted.entry.name}', "
                             "which is not in its catalog", param="workers")
    if info.url is None:
        return hosted
    return hosted.model_copy(update={"info": info.model_copy(update={"url": _rebuilt_url(report, info.id, info.url)})})


def _rebuilt_url(report: HiveReport, worker_id: str, given: str) -> str:
    """(4) The URL the queen uses for worker `worker_id`, which the report places at `given`, built from
    validated parts; an InvalidRequest for a place that is not this hive's own."""
    match = _WORKER_URL.match(given)
    expected = worker_url(report, 1).rsplit(":", 1)[0]
    if (match is None or match["scheme"] != ("https" if report.tls else "http")
            or not same_address(match["host"].strip("[]"), report.address) or not 0 < int(match["port"]) < 65536):
        raise InvalidRequest(f"hive '{report.alias}' reports worker {worker_id} at {given[:80]!r}, not on its "
                             f"own address ({expected}:PORT)", param="workers")
    fronted = match["path"] is not None
    if fronted and (match["path"] != front_path(worker_id) or int(match["port"]) != report.port):
        raise InvalidRequest(f"hive '{report.alias}' reports worker {worker_id} at {given[:80]!r}: a worker it "
                             f"fronts is at {expected}:{report.port}{front_path(worker_id)}", param="workers")
    return worker_url(report, int(match["port"])) + (front_path(worker_id) if fronted else "")


def trusted_workers(report: HiveReport) -> list[HostedWorker]:
    """Every worker of the report checked as `trusted_worker`, each id once."""
    ids = [hosted.info.id for hosted in report.workers]
    if len(ids) != len(set(ids)):
        raise InvalidRequest(f"hive '{report.alias}' lists a worker id twice", param="workers")
    return [trusted_worker(report, hosted) for hosted in report.workers]
