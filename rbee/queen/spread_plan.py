"""A model across hives: which hives, which devices, what share each holds (DESIGN.md decision 13), pure.

    (1) a model that fits one hive (all its devices together) is never spread, unless forced: the plan says
        which hive holds it;
    (2) the main hive is the one with the most room (of the forced devices' hives, when forced): it runs
        llama-server, whose clients (the prompt, the logits) never cross the network;
    (3) helpers: the other hives whose link to the main one is measured and within the bound
        (RBEE_SPREAD_MAX_RTT_MS, default 5 ms median round trip; RBEE_SPREAD_MIN_MBPS, default 100 MB/s),
        best link first (lowest round trip, then most bandwidth), added until the devices hold the model;
        a link not measured or over the bound is refused, with its numbers; a helper lends every device of
        its own with room for more than a runtime (both GPUs of a server with two, and its RAM), all through
        one rpc-server (rbee/hive/rpc_servers.py);
    (4) each device holds a share of the layers in proportion to its room; every device but the first holds
        a runtime more (estimate.OVERHEAD), so that is taken from its room first;
    (5) none of that holds the model: a refusal with each hive's room, the need, and the refused links.

Why those bounds: llama.cpp's RPC backend crosses the network once per layer boundary between devices for
every token, so a round trip adds to each token's time. PR #6829 measured 63 tokens/s on one machine against
42 tokens/s over gigabit RPC (~0.2 ms round trips, ~110 MB/s): a third of the speed lost on a good LAN. At
5 ms a round trip costs more than a small model's whole token; below 100 MB/s (a 1 Gb/s link at most) the
first load of a helper's share and the activations of a long prompt take longer than they are worth. Both
are settings, so a user with a slower link who prefers slow to nothing can raise them.

llama-server's device order with `--rpc` (llama.cpp src/llama.cpp, `llama_model_load_from_file`, the default
device selection when `--device` is not given): the RPC servers' devices come *first*, in `--rpc` order
("add RPC servers at the front of the list to minimize network transfers"), then the local GPUs; the CPU is
not in that list, it holds the layers not offloaded (the first ones: `-ngl` counts from the last layer).
So `tensor_split` lists the helpers' devices in `--rpc` order (helper by helper, best link first; within a helper
in its rpc-server's `-d` order, which is the plan's), then the main hive's GPUs; the main hive's CPU share is
`main_cpu_share` (what -ngl leaves on it).

Views in, plan out: no I/O, no clock (rbee/queen/spreads.py gathers the views and the links).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rbee.contracts.spread_plans import LinkMeasured, PlannedDevice, RefusedLink, SpreadDevice, SpreadPlan
from rbee.hive.estimate import OVERHEAD
from rbee.queen.placement import CPU, DeviceView

GiB = 1 << 30


@dataclass(frozen=True)
class Bounds:
    max_rtt_ms: float = 5.0
    min_mbps: float = 100.0


Links = Mapping[tuple[str, str], LinkMeasured]
"""The latest measure per ordered pair (source, peer); a link counts in either direction."""


def link_between(links: Links, a: str, b: str) -> LinkMeasured | None:
    """The freshest measure of the link between hives `a` and `b`, whichever measured it."""
    found = [m for m in (links.get((a, b)), links.get((b, a))) if m is not None]
    return max(found, key=lambda m: m.measured_at) if found else None


def _gb(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def _room(devices: Sequence[DeviceView]) -> int:
    """What a hive's devices hold together: each device after the first holds a runtime more."""
    rooms = sorted((d.total for d in devices), reverse=True)
    return max(0, sum(rooms) - OVERHEAD * (len(rooms) - 1)) if rooms else 0


def _why_not(link: LinkMeasured | None, bounds: Bounds) -> str | None:
    if link is None:
        return "its link to the main hive is not measured (rbee status --links measures it)"
    if link.rtt_ms_median > bounds.max_rtt_ms:
        return (f"round trip {link.rtt_ms_median:.2f} ms median is over RBEE_SPREAD_MAX_RTT_MS="
                f"{bounds.max_rtt_ms:g}")
    if link.mbps < bounds.min_mbps:
        return f"{link.mbps:.1f} MB/s is under RBEE_SPREAD_MIN_MBPS={bounds.min_mbps:g}"
    return None


def _shares(chosen: list[tuple[str, DeviceView]], need: int) -> list[tuple[str, DeviceView, int, float]]:
    """(hive, device, usable room, share of the layers) for each device, shares in proportion to the rooms."""
    usable = [(hive, d, d.total - (OVERHEAD if i else 0)) for i, (hive, d) in enumerate(chosen)]
    total = sum(max(u, 0) for _, _, u in usable) or 1
    return [(hive, d, u, round(max(u, 0) / total, 4)) for hive, d, u in usable]


def _ordered(main: str, helpers: list[str], parts: list[tuple[str, DeviceView, int, float]]) -> list[PlannedDevice]:
    """The devices in llama-server's order: the helpers' (RPC, in --rpc order), then the main hive's GPUs;
    the main hive's CPU last, outside the list (order None)."""
    rank = {h: i for i, h in enumerate(helpers)}
    key = [p for p in parts if p[0] != main]
    key.sort(key=lambda p: rank[p[0]])
    local = [p for p in parts if p[0] == main and p[1].device != CPU]
    cpu = [p for p in parts if p[0] == main and p[1].device == CPU]
    out = [PlannedDevice(hive=h, device=d.device, room=u, share=s, rpc=h != main, order=i)
           for i, (h, d, u, s) in enumerate(key + local)]
    return out + [PlannedDevice(hive=h, device=d.device, room=u, share=s, rpc=False, order=None)
                  for h, d, u, s in cpu]


def _plan(model: str, need: int, main: str, helpers: list[str], chosen: list[tuple[str, DeviceView]],
          rooms: dict[str, int], links: list[LinkMeasured], refused: list[RefusedLink]) -> SpreadPlan:
    devices = _ordered(main, helpers, _shares(chosen, need))
    return SpreadPlan(
        model=model, need=need, spread=True, main=main, helpers=helpers, devices=devices, rooms=rooms,
        reason=f"{model} needs {_gb(need)}, more than any one hive has: spread over {', '.join([main, *helpers])}",
        tensor_split=[d.share for d in devices if d.order is not None],
        main_cpu_share=sum(d.share for d in devices if d.order is None), links=links, refused=refused)


def _refusal(model: str, need: int, rooms: dict[str, int], refused: list[RefusedLink], why: str) -> SpreadPlan:
    has = ", ".join(f"{h} {_gb(r)}" for h, r in sorted(rooms.items())) or "no hive is ready"
    links = "; ".join(f"{r.hive}: {r.reason}" for r in refused)
    return SpreadPlan(model=model, need=need, spread=False, rooms=rooms, refused=refused,
                      reason=f"{model} needs {_gb(need)}; {why} (room: {has})" + (f"; refused: {links}" if links
                                                                                   else ""))


def plan(model: str, need: int, hives: Mapping[str, Sequence[DeviceView]], links: Links,
         bounds: Bounds = Bounds()) -> SpreadPlan:
    """Where `model` (needing `need` bytes) goes when no one hive holds it; see the module docstring."""
    views = {h: [d for d in ds if not d.parts and d.total > 0] for h, ds in hives.items()}
    rooms = {h: _room(ds) for h, ds in views.items()}
    # (1)
    fits = sorted((h for h, r in rooms.items() if r >= need), key=lambda h: (-rooms[h], h))
    if fits:
        return SpreadPlan(model=model, need=need, spread=False, rooms=rooms, main=fits[0],
                          reason=f"{model} needs {_gb(need)} and fits hive {fits[0]} ({_gb(rooms[fits[0]])}): "
                                 "not spread")
    if not rooms:
        return _refusal(model, need, rooms, [], "no hive is ready")
    # (2)
    main = min(rooms, key=lambda h: (-rooms[h], h))
    return _grow(model, need, main, views, rooms, links, bounds)


def _judged(main: str, others: list[str], links: Links,
            bounds: Bounds) -> tuple[list[tuple[str, LinkMeasured]], list[RefusedLink]]:
    """(3) The hives of `others` whose link to `main` is within the bound, best link first; the refused ones."""
    refused, usable = [], []
    for hive in sorted(others):
        link = link_between(links, main, hive)
        why = _why_not(link, bounds)
        if why is not None or link is None:
            refused.append(RefusedLink(hive=hive, reason=why or "not measured"))
        else:
            usable.append((link.rtt_ms_median, -link.mbps, hive, link))
    return [(hive, link) for *_, hive, link in sorted(usable)], refused


def _grow(model: str, need: int, main: str, views: Mapping[str, Sequence[DeviceView]], rooms: dict[str, int],
          links: Links, bounds: Bounds) -> SpreadPlan:
    """(3)-(5): helpers by link quality added to `main` until the devices hold `need`."""
    usable, refused = _judged(main, [h for h in views if h != main], links, bounds)
    chosen = _main_first(main, views[main])
    helpers: list[str] = []
    used: list[LinkMeasured] = []
    for hive, link in usable:
        if _room([d for _, d in chosen]) >= need:
            break
        lent = [(hive, d) for d in views[hive] if d.total > OVERHEAD]  # a device after the first holds a runtime
        if not lent:
            continue
        chosen += lent
        helpers.append(hive)
        used.append(link)
    if _room([d for _, d in chosen]) < need:
        return _refusal(model, need, rooms, refused, "the hives with a usable link to the main one "
                        f"({main}) do not hold it together")
    return _plan(model, need, main, helpers, chosen, rooms, used, refused)


def _main_first(main: str, devices: Sequence[DeviceView]) -> list[tuple[str, DeviceView]]:
    """The main hive's devices, its largest first (the one that holds the runtime counted in the need)."""
    return [(main, d) for d in sorted(devices, key=lambda d: -d.total)]


class SpreadRefused(ValueError):
    """A forced spread that names what is not there: the message lists what is."""


def _picked(asked: list[SpreadDevice], hives: Mapping[str, Sequence[DeviceView]]) -> dict[str, list[DeviceView]]:
    """The views of the forced devices, by hive; `SpreadRefused` naming a hive or device that is not there."""
    picked: dict[str, list[DeviceView]] = {}
    for d in asked:
        if d.hive not in hives:
            known = ", ".join(sorted(hives)) or "none"
            raise SpreadRefused(f"{d}: there is no ready hive '{d.hive}' (ready hives: {known})")
        view = next((v for v in hives[d.hive] if v.device == d.device and not v.parts), None)
        if view is None:
            has = ", ".join(v.device for v in hives[d.hive] if not v.parts) or "none"
            raise SpreadRefused(f"{d}: hive '{d.hive}' has no device '{d.device}' (it has: {has})")
        if view.total <= 0:
            raise SpreadRefused(f"{d}: device '{d.device}' of hive '{d.hive}' has no room: its workers (or other "
                                "spreads) hold all of its memory")
        picked.setdefault(d.hive, []).append(view)
    return picked


def _each_holds_a_share(plan: SpreadPlan) -> None:
    """`SpreadRefused` naming a forced device too small to hold anything: each after the first holds a runtime."""
    for d in plan.devices:
        if d.share <= 0:
            raise SpreadRefused(f"{d.hive}:{d.device}: device '{d.device}' of hive '{d.hive}' has "
                                f"{_gb(d.room + OVERHEAD)} free, not more than the {_gb(OVERHEAD)} of the runtime "
                                "each device of a spread but the first holds")


def forced(model: str, need: int, asked: list[SpreadDevice], hives: Mapping[str, Sequence[DeviceView]],
           links: Links, bounds: Bounds = Bounds()) -> SpreadPlan:
    """The plan for a forced spread (`HIVE:DEV+HIVE:DEV`, parsed by contracts.spread_plans.parse_spread): those
    devices only, even for a model that fits one hive; `SpreadRefused` for a hive or device not there."""
    picked = _picked(asked, hives)
    named = "+".join(map(str, asked))
    rooms = {h: _room(ds) for h, ds in picked.items()}
    main = min(rooms, key=lambda h: (-rooms[h], h))
    usable, refused = _judged(main, [h for h in picked if h != main], links, bounds)
    if refused:
        return _refusal(model, need, rooms, refused, f"the spread {named} has a link over the bound")
    helpers = [hive for hive, _ in usable]
    chosen = _main_first(main, picked[main]) + [(h, d) for h in helpers for d in picked[h]]
    done = _plan(model, need, main, helpers, chosen, rooms, [link for _, link in usable], [])
    _each_holds_a_share(done)
    if _room([d for _, d in chosen]) < need:
        return _refusal(model, need, rooms, [], f"the devices of {named} do not hold it")
    return done.model_copy(update={"reason": f"forced spread over {named}"})
