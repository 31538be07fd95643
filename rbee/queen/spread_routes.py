"""Spreads across hives through the API: the links the queen measured, and the plan it would carry out.

    GET  /v1/links            {"links": the latest measure of each pair of hives (LinkMeasured), "failures"}
    POST /v1/links/measure    LinksAsk: {"a", "b"} measures that pair now; {} measures every pair of ready
                              hives with no measure younger than LINK_MAX_AGE_S (`rbee status --links`)
    POST /v1/spreads/plan     SpreadAsk -> SpreadPlan: where a model would go across hives (`rbee worker
                              start MODEL --dry-run`); a forced spread, else the model's pin (`rbee model set
                              MODEL --spread ...`), else rbee/queen/spread_plan.py's own choice

All of them need the admin token (guard.py: not a client path). A plan measures the stale links of the ready
hives first. It counts the memory free now on each device (device_views.py, as placement does), without
evicting anyone. `start_planned` carries a plan out (rbee/queen/spread_run.py): for `rbee worker start --device
HIVE:DEV+HIVE:DEV` (a job), and for the scheduler's load step when no one hive holds a model (`load_spread`).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.common import settings
from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.hives import HiveState
from rbee.contracts.models import ModelEntry
from rbee.contracts.spread_plans import LinksAsk, SpreadAsk, SpreadPlan, parse_spread
from rbee.queen import copies as copies_mod
from rbee.queen import spread_plan
from rbee.queen.device_views import device_views
from rbee.queen.errors import InvalidRequest, ModelNotFound, ModelTooLargeError, QueenError, WorkerUnavailable
from rbee.queen.executor import hold, own_settings
from rbee.queen.hive_seam import AnyWorker, HiveSeam
from rbee.queen.placement import DeviceView
from rbee.queen.requests import read_json
from rbee.queen.spill import HOLDING
from rbee.queen.state import QueenState, queen_state

log = logging.getLogger(__name__)


async def list_links(request: Request) -> Response:
    return JSONResponse(_links(queen_state(request), []))


def _links(state: QueenState, failures: list[str]) -> dict[str, object]:
    found = state.links.latest()
    return {"links": [m.model_dump(mode="json") for _, m in sorted(found.items())], "failures": failures}


async def measure_links(request: Request) -> Response:
    state = queen_state(request)
    _, asked = await read_json(request, LinksAsk)
    if (asked.a is None) != (asked.b is None):
        raise InvalidRequest("Name both hives of a link ('a' and 'b'), or neither to measure every stale pair.",
                             param="b" if asked.b is None else "a")
    if asked.a is not None and asked.b is not None:
        await state.links.measure(asked.a, asked.b)
        return JSONResponse(_links(state, []))
    return JSONResponse(_links(state, await state.links.refresh()))


async def _holders(hives: list[HiveSeam], model: str) -> list[tuple[HiveSeam, ModelEntry]]:
    found = [(h, entry) for h in hives if (entry := await h.holds(model)) is not None]
    if not found:
        raise ModelNotFound(f"No ready hive has '{model}'; a spread needs it on at least one "
                            f"(`rbee model pull {model}`).", param="model")
    return found


async def plan_for(state: QueenState, asked: SpreadAsk) -> SpreadPlan:
    """The plan for `asked`: the ready hives' devices now, the links (stale ones measured first), the need."""
    ready = [h for h in state.hives.values() if h.state is HiveState.READY]
    holders = await _holders(ready, asked.model)
    need = max([await h.need(entry) for h, entry in holders])
    holding = [w for h in ready for w in h.supervisor.workers() if w.state in HOLDING]
    views: dict[str, list[DeviceView]] = {h.alias: device_views(h, holding, need, 0) for h in ready}
    text = asked.spread or own_settings(holders[0][1].name).spread
    await state.links.refresh([h.alias for h in ready])
    max_rtt, min_mbps = settings.spread_bounds()
    bounds = spread_plan.Bounds(max_rtt_ms=max_rtt, min_mbps=min_mbps)
    name = holders[0][1].name
    if text is None:
        return spread_plan.plan(name, need, views, state.links.latest(), bounds)
    try:
        return spread_plan.forced(name, need, parse_spread(text), views, state.links.latest(), bounds)
    except spread_plan.SpreadRefused as exc:
        raise InvalidRequest(str(exc), param="spread") from exc


async def start_planned(state: QueenState, plan: SpreadPlan, emit: Emit) -> AnyWorker:
    """`plan` carried out: the model onto the main hive (a peer's copy, when it has none: the helpers get their
    tensors from it), then the spread; its keep_alive runs from now. `JobFailed` saying why not."""
    placed = await state.copies.ensure_on(state.hives[plan.main or ""], plan.model, emit, allow_hub=False)
    worker = await state.spreads.start(plan, placed.entry)
    state.scheduler.loads.started(worker, hold(None, own_settings(placed.entry.name)))
    return worker


async def load_spread(state: QueenState, model: str, refused: QueenError) -> AnyWorker:
    """The scheduler's load step found no one hive that can hold `model` (`refused`): a spread across hives,
    else that refusal with the plan's numbers (each hive's room, the need, the refused links)."""
    plan = await plan_for(state, SpreadAsk(model=model))
    if not plan.spread:
        raise ModelTooLargeError(f"{refused.message} Nor can a spread across hives hold it: {plan.reason}.",
                                 param=refused.param)
    log.info("%s: %s", model, plan.reason)
    try:
        return await start_planned(state, plan, copies_mod.logged)
    except JobFailed as exc:
        raise WorkerUnavailable(str(exc)) from exc


async def plan_spread(request: Request) -> Response:
    _, asked = await read_json(request, SpreadAsk)
    return JSONResponse((await plan_for(queen_state(request), asked)).model_dump(mode="json"))


routes = [
    Route("/v1/links", list_links, methods=["GET"]),
    Route("/v1/links/measure", measure_links, methods=["POST"]),
    Route("/v1/spreads/plan", plan_spread, methods=["POST"]),
]
