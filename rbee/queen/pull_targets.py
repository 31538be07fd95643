"""The effect around rbee/queen/pull_placement.py: a `model.pull` job that names no hive asks the hub what the
name means (its files and sizes, with the queen's HF_ENDPOINT and HF_TOKEN), looks at every hive (its devices
as the scheduler sees them, its free disk, its catalog, whether it answers) and pulls where the choice says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.hives import HiveState
from rbee.hive import downloads, model_refs
from rbee.queen.device_views import device_views as _device_views
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.pull_placement import PullCandidate, PullChoice, choose, estimate_need
from rbee.queen.scheduler import _HOLDING


async def _candidate(hive: HiveSeam, need: int, names: set[str]) -> PullCandidate:
    if hive.state is not HiveState.READY:
        silent = hive.status().last_seen_s or 0
        return PullCandidate(hive.alias, problem=f"is {hive.state}: no heartbeat for {silent:.0f} s")
    holding = [w for w in hive.supervisor.workers() if w.state in _HOLDING]
    views = tuple(_device_views(hive, holding, need, 0))
    disk = await hive.disk()
    held = any(m.name in names and not m.missing for m in await hive.catalog.entries())
    return PullCandidate(hive.alias, views, disk.free_bytes, held)


async def place_pull(hives: Mapping[str, HiveSeam], model: str, emit: Emit, hub: downloads.Hub | None = None
                     ) -> tuple[HiveSeam, PullChoice] | None:
    """The hive a pull of `model` goes to, and the choice with its reasons (emitted as a progress message);
    None for a name that is not a hub model (it is looked up in a catalog, there is nothing to place), or
    when there is one hive only. `hub`:
    where the files are looked up (default: this process's HF_ENDPOINT and HF_TOKEN, as for the pull itself).
    `JobFailed` when the hub cannot say what the name means, or when no hive can take it (each hive's reason)."""
    try:
        ref = model_refs.parse(model)
    except model_refs.BadModelRef as exc:
        raise JobFailed(str(exc)) from exc
    if not ref.is_hub or len(hives) < 2:
        return None  # nothing to place, or no choice to make: the one hive's own checks speak
    emit(message=f"looking up {ref.repo} to choose a hive")
    plan = await asyncio.to_thread(downloads.plan, ref, hub)
    size = plan.total_bytes
    need = estimate_need(size)
    names = {ref.text, plan.catalog_name(ref), downloads.catalog_name_guess(ref)}
    candidates = [await _candidate(hive, need, names) for hive in list(hives.values())]
    choice = choose(need, size, candidates)
    if choice.best is None:
        raise JobFailed(choice.refusal())
    emit(message=choice.explain(), data={"hive": choice.best.hive, "placement": choice.explain()})
    return hives[choice.best.hive], choice
