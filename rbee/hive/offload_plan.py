"""Which of a worker's layers go to the GPUs and which stay in RAM (issue 21 point 0), on the hive that starts it.

The queen plans a "GPUS+cpu" worker with estimate.offload over the rooms it sees (rbee/queen/device_views.py);
the hive makes the same plan over the GPUs' free memory, and starts llama-server with that many layers
(`--n-gpu-layers`). A GPU asked for by name ("cuda0") that is smaller than the worker, or a worker the hive
places itself (no device asked) that no GPU can hold, offloads the same way; a worker asked onto "cpu" never.
"""

from __future__ import annotations

from dataclasses import dataclass

from rbee.contracts.hives import DeviceInfo
from rbee.contracts.workers import memory_held
from rbee.hive.estimate import Offload, offload

CPU = "cpu"


@dataclass(frozen=True)
class Plan:
    """The GPUs a worker uses (none: the CPU alone) and, when some layers stay in RAM, how many go where."""

    gpus: tuple[DeviceInfo, ...]
    offload: Offload | None = None

    @property
    def device(self) -> str:
        """The hive's name for where it runs: "cuda0", "cuda0+cuda1", "cuda0+cpu", or "cpu"."""
        names = [d.id for d in self.gpus] + ([CPU] if self.offload or not self.gpus else [])
        return "+".join(names)

    def shares(self, memory: int) -> tuple[int, ...]:
        """Bytes it holds on each part of `device` when offloaded (else () : in proportion to the GPUs' sizes)."""
        if self.offload is None:
            return ()
        gpus = "+".join(d.id for d in self.gpus)
        on_gpus = memory_held(gpus, self.offload.gpu, [d.total_bytes for d in self.gpus])
        return (*on_gpus.values(), memory - self.offload.gpu)

    def describe(self) -> str | None:
        return self.offload.describe("+".join(d.id for d in self.gpus)) if self.offload else None


def split_asked(device: str | None) -> tuple[str | None, bool]:
    """"cuda0+cpu" -> ("cuda0", True): the GPUs asked for, and whether RAM was asked for beside them."""
    if device is None or "+" not in device or device.lower().rsplit("+", 1)[1] != CPU:
        return device, False
    return device.rsplit("+", 1)[0], True


def plan(on: list[DeviceInfo], known: list[DeviceInfo], asked: str | None, with_ram: bool, memory: int,
         block_count: int | None) -> Plan:
    """Where a worker of `memory` bytes goes: `on` (what devices_for chose) when it fits there, else those GPUs
    with the layers that do not fit in RAM; the CPU alone when asked for, or when not one layer fits on a GPU.
    `memory` counts a runtime per GPU already."""
    gpus = [d for d in on if d.id != CPU]
    if not gpus and asked is None:  # the hive chose the CPU for want of GPU room: the roomiest GPU and RAM
        gpus = sorted((d for d in known if d.engine_name and not d.failed), key=free_of, reverse=True)[:1]
    if not gpus:
        return Plan(())
    # A GPU asked for alone offloads only what its total cannot hold (its free memory may lag behind the
    # workers stopped for this one); the split is planned over the free memory, as the queen plans it.
    if not with_ram and gpus == on and sum(d.total_bytes for d in gpus) >= memory:
        return Plan(tuple(gpus))
    split = offload(memory, block_count, sum(free_of(d) for d in gpus))
    if split is None:
        return Plan(tuple(gpus)) if gpus == on else Plan(())
    return Plan(tuple(gpus), split)


def free_of(d: DeviceInfo) -> int:
    """Its free memory as last reported, else its total."""
    return d.free_bytes if d.free_bytes is not None else d.total_bytes
