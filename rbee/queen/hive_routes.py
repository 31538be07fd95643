"""Hives on other machines: enrolment (keeper), registration and heartbeats (hives), the list.

A hive proves who it is with the join token the queen gave it at enrolment; a wrong or revoked
token is refused with 401 and logged here with the caller's address (the hive logs it too).
"""

from __future__ import annotations

import logging
import ssl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.common import settings, tls
from rbee.common.version import current as current_version
from rbee.contracts.hives import (
    HiveAck,
    HiveCertificate,
    HiveEnroll,
    HiveEnrolled,
    HiveReport,
    HiveState,
    HiveStatus,
)
from rbee.queen import hive_trust
from rbee.queen.auth import Principal
from rbee.queen.db import Enrolment
from rbee.queen.errors import InvalidRequest, NotFound, QueenError
from rbee.queen.guard import principal_of
from rbee.queen.remote_hive import RemoteHive
from rbee.queen.requests import read_json
from rbee.queen.state import QueenState, queen_state

log = logging.getLogger(__name__)

LOCAL_ALIAS = "localhost"


class InvalidToken(QueenError):
    status = 401
    code = "invalid_token"


async def enrol(request: Request) -> Response:
    _, asked = await read_json(request, HiveEnroll)
    if asked.alias == LOCAL_ALIAS:
        raise InvalidRequest("'localhost' is the queen's own hive; give the remote machine another alias.",
                             param="alias")
    state = queen_state(request)
    if asked.certificate is not None:
        _check_certificate(asked.certificate)
    token = await state.db.enrol(asked.alias, asked.address, asked.certificate)
    await state.audit(principal_of(request.scope), request, "hive.enrol", asked.alias)
    log.info("enrolled hive '%s' (a new join token; any previous one is revoked)", asked.alias)
    return JSONResponse(HiveEnrolled(alias=asked.alias, token=token).model_dump(), status_code=201)


def _check_certificate(pem: str) -> None:
    """A certificate to pin must be one: refused with a 400 now rather than ignored at registration."""
    try:
        tls.pinned_context(pem)
    except tls.TLSError as exc:
        raise InvalidRequest(str(exc), param="certificate") from exc


async def list_hives(request: Request) -> Response:
    state = queen_state(request)
    seen: dict[str, HiveStatus] = {}
    for hive in list(state.hives.values()):
        seen[hive.alias] = hive.status()
    for enrolment in await state.db.hives():
        seen.setdefault(enrolment.alias, HiveStatus(alias=enrolment.alias, state=HiveState.ENROLLED))
    return JSONResponse([s.model_dump(mode="json") for s in seen.values()])


async def forget(request: Request) -> Response:
    """Revoke a hive's token and stop using it (what `rbee hive uninstall` ends with)."""
    state = queen_state(request)
    alias = request.path_params["alias"]
    revoked = await state.db.revoke(alias)
    hive = state.hives.get(alias)
    if isinstance(hive, RemoteHive):
        del state.hives[alias]
        await hive.close()
    elif not revoked:
        raise NotFound(f"There is no hive '{alias}'.")
    await state.audit(principal_of(request.scope), request, "hive.remove", alias)
    log.info("hive '%s' removed; its token is revoked", alias)
    state.scheduler.notify()
    return JSONResponse({"alias": alias, "revoked": True})


async def _authenticated_report(request: Request) -> tuple[HiveReport, str, Enrolment]:
    """The hive's report, checked (rbee/queen/hive_trust.py), and its token; the token is checked before the
    body is read. Every refusal is logged with the real peer."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    peer = request.client.host if request.client else "?"
    enrolment = await queen_state(request).db.enrolment_for(token) if token else None
    claimed = request.headers.get("x-rbee-hive-alias", "?")[:64]
    if enrolment is None:
        log.warning("refused hive %r from %s: %s", claimed, peer,
                    "no join token" if not token else "unknown or revoked join token")
        raise InvalidToken(f"The join token of hive '{claimed}' is unknown or revoked. Re-run "
                           f"`rbee hive install {claimed}` on the queen's machine.")
    try:
        _, report = await read_json(request, HiveReport)
        if report.alias != enrolment.alias:
            raise InvalidToken(f"This join token belongs to hive '{enrolment.alias}', not '{report.alias}'.")
        hive_trust.check_origin(report, peer, enrolment.address)
        hive_trust.check_tls(report, tls_required=queen_state(request).hive_tls is not None)
        report = report.model_copy(update={"workers": hive_trust.trusted_workers(report)})
    except QueenError as exc:
        log.warning("refused a report under the token of hive '%s' from %s: %s", enrolment.alias, peer,
                    exc.message[:300])
        raise
    return report, token, enrolment


def _checking(state: QueenState, enrolment: Enrolment) -> ssl.SSLContext | None:
    """How the queen checks a hive and its workers: the certificate issued to it alone when one is recorded
    (an allow-list: another hive's, or an uninstalled one's, is refused), else any from the cluster CA."""
    if state.hive_tls is None or enrolment.certificate is None:
        return state.hive_tls
    try:
        return tls.pinned_context(enrolment.certificate)
    except tls.TLSError as exc:
        log.warning("hive '%s': %s; checking it against the cluster CA instead", enrolment.alias, exc)
        return state.hive_tls


def _ack(report: HiveReport) -> HiveAck:
    queen = current_version()
    message = None
    if report.version != queen:
        message = (f"hive '{report.alias}' runs rbee {report.version} and the queen {queen}: "
                   f"run `rbee hive upgrade {report.alias}`")
    return HiveAck(queen_version=queen, heartbeat_s=settings.heartbeat_s(), message=message)


async def register(request: Request) -> Response:
    state = queen_state(request)
    report, token, enrolment = await _authenticated_report(request)
    ack = _ack(report)
    hive = state.hives.get(report.alias)
    if isinstance(hive, RemoteHive):
        if enrolment.certificate != hive.certificate:  # re-issued (`rbee tls rotate`) or re-installed
            await hive.use_tls(_checking(state, enrolment), enrolment.certificate)
        adopted = hive.heard_from(report, token)
    else:
        hive = RemoteHive(report, token, _checking(state, enrolment), enrolment.certificate)
        state.hives[report.alias] = hive
        adopted = [w.id for w in hive.supervisor.workers()]
    hive.registrations += 1
    await state.audit(Principal(f"hive:{report.alias}"), request, "hive.register", report.alias,
                      f"rbee {report.version}; adopted: {', '.join(adopted) or 'no workers'}")
    hive.problem = ack.message
    if ack.message:
        log.warning("%s", ack.message)
    log.info("hive '%s' registered from %s (v%s, %d worker(s) adopted)", report.alias, report.address,
             report.version, len(hive.supervisor.workers()))
    state.scheduler.notify()
    return JSONResponse(ack.model_dump())


async def heartbeat(request: Request) -> Response:
    state = queen_state(request)
    report, token, _ = await _authenticated_report(request)
    hive = state.hives.get(report.alias)
    if not isinstance(hive, RemoteHive):
        raise NotFound(f"hive '{report.alias}' is not registered; register first")
    adopted = hive.heard_from(report, token)
    if adopted:
        await state.audit(Principal(f"hive:{report.alias}"), request, "worker.adopt", report.alias, ", ".join(adopted))
    state.scheduler.notify()
    return JSONResponse(_ack(report).model_dump())


async def set_certificate(request: Request) -> Response:
    """The certificate `rbee tls rotate` gave an installed hive: from its next registration, the only one accepted."""
    state = queen_state(request)
    alias = request.path_params["alias"]
    _, given = await read_json(request, HiveCertificate)
    _check_certificate(given.certificate)
    if not await state.db.set_certificate(alias, given.certificate):
        raise NotFound(f"There is no hive '{alias}'; `rbee hive install {alias}` enrols it.")
    await state.audit(principal_of(request.scope), request, "hive.certificate", alias)
    return JSONResponse({"alias": alias, "certificate": "recorded"})


routes = [
    Route("/v1/hives", enrol, methods=["POST"]),
    Route("/v1/hives", list_hives, methods=["GET"]),
    Route("/v1/hives/register", register, methods=["POST"]),
    Route("/v1/hives/heartbeat", heartbeat, methods=["POST"]),
    Route("/v1/hives/{alias}", forget, methods=["DELETE"]),
    Route("/v1/hives/{alias}/certificate", set_certificate, methods=["PUT"]),
]
