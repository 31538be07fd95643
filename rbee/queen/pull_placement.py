"""Where a download goes when no hive is named (`rbee model pull NAME`, `rbee infer -m NAME`), as a pure function.

The need is known before any file is: the hub's metadata gives the files' sizes, and a worker's memory is
estimated from them (`estimate_need`: weights, plus a quarter of them for the KV cache and compute buffers,
plus the runtime's overhead). The GGUF header is not read (it is not on any hive yet); the worker that starts
later is sized from the header by the hive that holds the file, so this estimate only ranks hives.

    (1) out: a hive that cannot be reached; one whose models folder has less free disk than the files need;
        one where no device could ever hold a worker of that size (placement.place's ModelTooLarge)
    (2) first: a hive that already holds the model (nothing to download)
    (3) then where a worker would run best, as the scheduler places it (placement.place over the hive's
        device views; rbee's own workers there count as room, since they can be unloaded): a GPU before
        the CPU, then the tightest fit, compared in whole GiB left over (smaller differences come and go with
        what other programs use)
    (4) then the most free disk, then the alias

Views in, choice out: no I/O, so it is tested on its own (tests/queen/test_pull_placement.py); the effect
around it is rbee/queen/pull_targets.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rbee.hive.estimate import OVERHEAD
from rbee.queen.placement import CPU, DeviceView, ModelTooLarge, place

MiB = 2**20
GiB = 2**30
COMPUTE_MARGIN = 64 * MiB


def estimate_need(size_bytes: int) -> int:
    """Bytes a worker of a model whose files take `size_bytes` is expected to hold, before its header is read."""
    return size_bytes + size_bytes // 4 + COMPUTE_MARGIN + OVERHEAD


def human(n: int) -> str:
    if n >= 1024 * GiB:
        return f"{n / (1024 * GiB):.1f} TiB"
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


@dataclass(frozen=True)
class PullCandidate:
    """One hive as the choice sees it."""

    hive: str
    devices: tuple[DeviceView, ...] = ()  # as the scheduler builds them (rbee/queen/device_views.py)
    free_disk: int | None = None  # free under its models folder; None: the hive does not say
    has_model: bool = False
    problem: str | None = None  # why it cannot take a download now (unreachable); None: it can


@dataclass(frozen=True)
class Ranked:
    hive: str
    device: str
    room: int  # what that device (or spread) has for a worker
    free_disk: int | None
    has_model: bool
    reason: str

    def _key(self, need: int) -> tuple[bool, bool, int, int, str]:
        return (not self.has_model, self.device == CPU, (self.room - need) // GiB, -(self.free_disk or 0),
                self.hive)


@dataclass(frozen=True)
class PullChoice:
    need: int
    size: int
    ranked: tuple[Ranked, ...]  # best first
    excluded: tuple[tuple[str, str], ...]  # (hive, why not), in the order the hives came

    @property
    def best(self) -> Ranked | None:
        return self.ranked[0] if self.ranked else None

    def explain(self) -> str:
        """One line for the user: which hive and why, and why not each other one."""
        best = self.best
        if best is None:
            return self.refusal()
        others = [f"{r.hive} {_why_later(best, r, self.need)}" for r in self.ranked[1:]]
        others += [f"{hive} {why}" for hive, why in self.excluded]
        return f"placing on {best.hive}: {best.reason}" + "".join(f"; {line}" for line in others)

    def refusal(self) -> str:
        """Why no hive can take it, hive by hive."""
        if not self.excluded:
            return "no hive is ready to take a download; `rbee hive list` shows them"
        reasons = "; ".join(f"{hive} {why}" for hive, why in self.excluded)
        return f"no hive can take the model (files {human(self.size)}, a worker needs ~{human(self.need)}): {reasons}"


def _why_later(best: Ranked, other: Ranked, need: int) -> str:
    if best.has_model and not other.has_model:
        return "does not hold it yet"
    if best.device != CPU and other.device == CPU:
        return f"has no GPU that holds it (its CPU has {human(other.room)})"
    if (other.room - need) // GiB != (best.room - need) // GiB:
        return f"would leave more memory unused (its {other.device} has {human(other.room)}; the tightest fit wins)"
    if (other.free_disk or 0) != (best.free_disk or 0):
        theirs, ours = _disk(other.free_disk), _disk(best.free_disk)
        return f"has less free disk ({theirs} against {ours})" if theirs != ours else \
            f"has a little less free disk (both about {ours})"
    return "fits as well (the first alias wins)"


def _disk(free: int | None) -> str:
    return "unknown" if free is None else human(free)


def _judge(need: int, size: int, c: PullCandidate) -> Ranked | str:
    """The candidate ranked, or why it is out."""
    if c.problem is not None:
        return c.problem
    if not c.has_model and c.free_disk is not None and c.free_disk < size:
        return f"has {human(c.free_disk)} free for models, the files need {human(size)}"
    try:
        device = place(need, c.devices, []).device
    except ModelTooLarge as exc:
        return f"cannot run it: a worker needs ~{human(need)} but its largest device has {human(exc.largest)}"
    assert device is not None  # with no workers counted, a device that could hold it has room
    reason = ("it already holds the model" if c.has_model else
              f"its {device.device} has {human(device.total)} for the ~{human(need)} a worker of the "
              f"{human(size)} model needs")
    return Ranked(c.hive, device.device, device.total, c.free_disk, c.has_model, reason)


def choose(need: int, size: int, candidates: Iterable[PullCandidate]) -> PullChoice:
    """Rank the hives for a download of `size` bytes whose worker needs `need` bytes (see the module's steps)."""
    ranked: list[Ranked] = []
    excluded: list[tuple[str, str]] = []
    for c in candidates:
        judged = _judge(need, size, c)  # (1)
        if isinstance(judged, str):
            excluded.append((c.hive, judged))
        else:
            ranked.append(judged)
    ranked.sort(key=lambda r: r._key(need))  # (2) to (4)
    return PullChoice(need, size, tuple(ranked), tuple(excluded))
