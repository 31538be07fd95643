"""What a hive computes on: the devices its engines can use, with live figures where a tool gives them.

  (1) each engine build says which devices it can use (`llama-server --list-devices`), so "detected" means
      "usable by a build here": a CUDA card next to a CPU-only build is not a device here. When several
      builds coexist (CUDA and CPU, say), each device is driven by the build that lists it (`assign_engines`);
  (2) live figures enrich them: NVIDIA through NVML (`nvidia-ml-py`; `nvidia-smi` when NVML cannot load),
      AMD through `rocm-smi`, Apple through `system_profiler` and `sysctl` (unified memory);
  (3) the CPU is always a device (RAM from host_memory, less RBEE_MEMORY_BUDGET's cap): a hive without a
      GPU is a CPU hive, never an error.
A device whose live query fails (a driver that stopped answering) is reported `failed`, with the tool's
own words, and the scheduler stops placing workers on it until it answers again.

The parsers are pure functions, tested against outputs recorded on real machines (tests/data/hardware).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rbee.contracts.hives import DeviceInfo
from rbee.hive.host_memory import host_memory

log = logging.getLogger(__name__)

MiB = 2**20
TOOL_TIMEOUT_S = 10.0
_DEVICE_LINE = re.compile(r"^\s+(?P<name>[A-Za-z][A-Za-z0-9_]*): (?P<description>.*?) "
                          r"\((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)\s*$")
_BACKENDS = (("cuda", "cuda"), ("rocm", "rocm"), ("hip", "rocm"), ("vulkan", "vulkan"), ("metal", "metal"),
             ("mtl", "metal"), ("sycl", "sycl"), ("cann", "cann"), ("opencl", "opencl"))


@dataclass(frozen=True)
class EngineDevice:
    """One line of `llama-server --list-devices`."""

    name: str  # what the engine calls it, and what `--device` takes: "CUDA0", "Metal", "Vulkan1"
    description: str
    total_bytes: int
    free_bytes: int

    @property
    def id(self) -> str:
        return self.name.lower()

    @property
    def backend(self) -> str:
        lowered = self.name.lower()
        found = (backend for prefix, backend in _BACKENDS if lowered.startswith(prefix))
        return next(found, lowered.rstrip("0123456789"))

    @property
    def is_gpu(self) -> bool:
        """A device workers can offload to (not an accelerator library such as BLAS: Accelerate)."""
        return self.backend in {backend for _, backend in _BACKENDS} and self.total_bytes > 0

    @property
    def index(self) -> int:
        digits = re.search(r"(\d+)$", self.name)
        return int(digits.group(1)) if digits else 0


@dataclass(frozen=True)
class Reading:
    """Live figures for one GPU from a vendor tool."""

    index: int
    name: str | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None
    utilization: float | None = None  # percent
    temperature_c: float | None = None


class ToolFailed(Exception):
    """A vendor tool or library that should answer did not (its own message)."""


# -- parsers (pure) ------------------------------------------------------------------------------

def parse_list_devices(text: str) -> list[EngineDevice]:
    """`llama-server --list-devices`: the lines after "Available devices:" (log lines before it are skipped)."""
    _, found, after = text.partition("Available devices:")
    if not found:
        return []
    devices = []
    for line in after.splitlines():
        match = _DEVICE_LINE.match(line)
        if match:
            devices.append(EngineDevice(match["name"], match["description"], int(match["total"]) * MiB,
                                        int(match["free"]) * MiB))
    return devices


def _number(value: str) -> float | None:
    value = value.strip().split(" ")[0]
    try:
        return float(value)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


NVIDIA_SMI_QUERY = "index,name,memory.total,memory.free,utilization.gpu,temperature.gpu"


def parse_nvidia_smi(text: str) -> list[Reading]:
    """`nvidia-smi --query-gpu=index,name,memory.total,memory.free,utilization.gpu,temperature.gpu
    --format=csv,noheader,nounits` (a header line, and units such as " MiB" and " %", are tolerated)."""
    readings = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4 or not cells[0].isdigit():
            continue  # the header, or a blank line
        total, free = _number(cells[2]), _number(cells[3])
        readings.append(Reading(
            index=int(cells[0]), name=cells[1],
            total_bytes=int(total * MiB) if total is not None else None,
            free_bytes=int(free * MiB) if free is not None else None,
            utilization=_number(cells[4]) if len(cells) > 4 else None,
            temperature_c=_number(cells[5]) if len(cells) > 5 else None,
        ))
    return readings


def parse_rocm_smi(text: str) -> list[Reading]:
    """`rocm-smi --showmeminfo vram --showuse --showtemp --showproductname --json`: one object per card."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ToolFailed(f"rocm-smi printed something that is not JSON: {text[:200]!r}") from exc
    readings = []
    for card, fields in sorted(data.items()):
        match = re.fullmatch(r"card(\d+)", card)
        if not match or not isinstance(fields, dict):
            continue  # e.g. "system"
        total = _number(str(fields.get("VRAM Total Memory (B)", "")))
        used = _number(str(fields.get("VRAM Total Used Memory (B)", "")))
        temps = [_number(str(v)) for k, v in fields.items() if k.startswith("Temperature (Sensor")]
        readings.append(Reading(
            index=int(match.group(1)),
            name=fields.get("Card Series") or fields.get("Card series") or fields.get("Device Name"),
            total_bytes=int(total) if total is not None else None,
            free_bytes=int(total - used) if total is not None and used is not None else None,
            utilization=_number(str(fields.get("GPU use (%)", ""))),
            temperature_c=next((t for t in temps if t is not None), None),
        ))
    return readings


def parse_system_profiler(text: str) -> str | None:
    """`system_profiler SPDisplaysDataType -json`: the Apple chip's name ("Apple M2 Ultra"), if any."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    for display in data.get("SPDisplaysDataType", []):
        model = display.get("sppci_model") or display.get("_name")
        if isinstance(model, str) and model.startswith("Apple"):
            cores = display.get("sppci_cores")
            return f"{model} ({cores}-core GPU)" if cores else model
    return None


def parse_sysctl_memsize(text: str) -> int | None:
    """`sysctl hw.memsize` (or `sysctl -n hw.memsize`): bytes of unified memory."""
    match = re.search(r"(\d{6,})", text)
    return int(match.group(1)) if match else None


def assign_engines(listings: Sequence[tuple[Path, Sequence[EngineDevice] | None]],
                   ) -> tuple[list[EngineDevice], dict[str, Path]]:
    """Which build drives each device when several builds are here (`listings`: each build's
    `--list-devices`, the hive's own engine first, then the best backend first).

    The first build to list a device drives it. A card a vendor backend (CUDA, ROCm, Metal) lists is not
    taken again through Vulkan, which names the same card. The CPU goes to a build that lists no GPU (a
    CPU build), else to the first build, which then runs with `--device none`; a build whose listing failed
    (None) drives nothing, and the CPU only when no other build is here.
    """
    chosen: list[EngineDevice] = []
    engine_for: dict[str, Path] = {}
    for path, listed in listings:
        for device in listed or ():
            if not device.is_gpu or device.id in engine_for:
                continue
            if device.backend == "vulkan" and any(c.backend != "vulkan" and c.description == device.description
                                                  for c in chosen):
                continue
            chosen.append(device)
            engine_for[device.id] = path
    answered = [(path, listed) for path, listed in listings if listed is not None]
    cpu_builds = [path for path, listed in answered if not any(d.is_gpu for d in listed)]
    anyone = cpu_builds + [path for path, _ in answered] + [path for path, listed in listings if listed is None]
    if anyone:
        engine_for["cpu"] = anyone[0]
    return chosen, engine_for


def _same_card(reading: Reading, device: EngineDevice) -> bool:
    return bool(reading.name) and " ".join(str(reading.name).lower().split()) == \
        " ".join(device.description.lower().split())


def match_readings(listed: Sequence[EngineDevice], readings: Sequence[Reading],
                   visible: Sequence[int] | None = None) -> dict[str, Reading]:
    """Which vendor reading is which engine device (by engine name).

    The numbers agree when the engine and the vendor tool both count cards in PCI order and none is hidden;
    `visible` (CUDA_VISIBLE_DEVICES as tool indices) maps the engine's numbers when some are. A reading whose
    name contradicts the engine's description gives way to one whose name matches, as on a machine with
    two kinds of card counted fastest first: a wrong card's free memory is worse than none. Names that
    never match (rocm-smi and HIP name AMD cards differently) leave the numbers in charge.
    """
    by_index = {r.index: r for r in readings}
    matched: dict[str, Reading] = {}
    taken: set[int] = set()
    for device in listed:
        index = visible[device.index] if visible is not None and device.index < len(visible) else device.index
        reading = by_index.get(index)
        if reading is None or not _same_card(reading, device):
            named = next((r for r in readings if r.index not in taken and _same_card(r, device)), None)
            reading = named or reading
        if reading is not None and reading.index not in taken:
            matched[device.name] = reading
            taken.add(reading.index)
    return matched


# -- asking the tools ------------------------------------------------------------------------------

def engine_env(**extra: str) -> dict[str, str]:
    """The environment an engine runs in: the hive's own, with CUDA counting cards in PCI bus order as NVML
    and nvidia-smi do. CUDA's default puts the fastest card first, so on a machine with two kinds of card
    "cuda0" would be one card to llama.cpp and another to NVML. A CUDA_DEVICE_ORDER the user set is kept
    (`match_readings` then pairs cards by name)."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", **os.environ, **extra}


def cuda_visible(environ: Mapping[str, str]) -> list[int] | None:
    """The NVML indices of the cards CUDA_VISIBLE_DEVICES shows, in the engine's numbering; None when it
    hides nothing, or names cards by UUID, or cards are not counted in PCI order (names pair them then)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in value.split(",")] if value else []
    if not entries or environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" or not all(e.isdigit() for e in entries):
        return None
    return [int(e) for e in entries]


async def _run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """A tool's standard output; `ToolFailed` with its own message when it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE,
                                                    stdin=asyncio.subprocess.DEVNULL, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=TOOL_TIMEOUT_S)
    except TimeoutError as exc:
        raise ToolFailed(f"{Path(argv[0]).name} did not answer within {TOOL_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise ToolFailed(f"{Path(argv[0]).name} could not run: {exc.strerror}") from exc
    if proc.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()
        raise ToolFailed(said[-1] if said else f"{Path(argv[0]).name} exited with {proc.returncode}")
    return out.decode(errors="replace")


async def engine_devices(engine: Path) -> list[EngineDevice]:
    """The devices this llama-server build can use."""
    return parse_list_devices(await _run([str(engine), "--list-devices"], env=engine_env()))


def _nvml_readings() -> list[Reading]:
    """NVIDIA figures through NVML (blocking; run in a thread). `ToolFailed` when NVML is there but fails."""
    try:
        import pynvml
    except ImportError as exc:
        raise LookupError("nvidia-ml-py is not installed") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise LookupError(str(exc)) from exc  # no driver here: not a failure, just no NVIDIA
    try:
        readings = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            readings.append(Reading(
                index=index, name=name.decode() if isinstance(name, bytes) else str(name),
                total_bytes=int(memory.total), free_bytes=int(memory.free),
                utilization=float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                temperature_c=float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
            ))
        return readings
    except pynvml.NVMLError as exc:
        raise ToolFailed(f"NVML: {exc}") from exc
    finally:
        pynvml.nvmlShutdown()


async def nvidia_readings() -> list[Reading]:
    try:
        return await asyncio.to_thread(_nvml_readings)
    except LookupError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    return parse_nvidia_smi(await _run([smi, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]))


async def amd_readings() -> list[Reading]:
    smi = shutil.which("rocm-smi")
    if smi is None:
        return []
    return parse_rocm_smi(await _run([smi, "--showmeminfo", "vram", "--showuse", "--showtemp",
                                      "--showproductname", "--json"]))


_apple: tuple[str | None, int | None] | None = None


async def apple_chip() -> tuple[str | None, int | None]:
    """The Mac's chip and unified memory: asked once (system_profiler takes a second, and neither changes)."""
    global _apple
    if sys.platform != "darwin":
        return None, None
    if _apple is None:
        try:
            chip = parse_system_profiler(await _run(["system_profiler", "SPDisplaysDataType", "-json"]))
            memory = parse_sysctl_memsize(await _run(["sysctl", "-n", "hw.memsize"]))
        except ToolFailed as exc:
            log.warning("cannot name the Apple chip: %s", exc)
            chip, memory = None, None
        _apple = (chip, memory)
    return _apple


def cpu_device(budget: int | None) -> DeviceInfo:
    memory = host_memory()
    total = min(budget, memory.total) if budget else memory.total
    return DeviceInfo(id="cpu", name=f"CPU ({os.cpu_count() or 1} threads)", backend="cpu",
                      total_bytes=total, free_bytes=min(memory.available, total))


async def _vendor(backend: str) -> tuple[list[Reading], str | None]:
    """Live readings for a backend's devices, and the tool's error if it failed."""
    try:
        if backend == "cuda":
            return await nvidia_readings(), None
        if backend == "rocm":
            return await amd_readings(), None
    except ToolFailed as exc:
        return [], str(exc)
    return [], None


async def detect(listed: Sequence[EngineDevice], budget: int | None) -> list[DeviceInfo]:
    """The hive's devices now: the engine's (enriched with live figures, or failed) and the CPU."""
    devices: list[DeviceInfo] = []
    listed = [d for d in listed if d.is_gpu]
    for backend in sorted({d.backend for d in listed}):
        readings, error = await _vendor(backend)
        ours = [d for d in listed if d.backend == backend]
        matched = match_readings(ours, readings, cuda_visible(engine_env()) if backend == "cuda" else None)
        chip, unified = await apple_chip() if backend == "metal" else (None, None)
        for d in ours:
            live = matched.get(d.name)
            failed = error if error else (f"{backend} reports no device {d.index} any more"
                                          if readings and live is None else None)
            name = live.name if live and live.name else chip or d.description
            if unified:
                name += f", {unified / 2**30:.0f} GiB unified memory"
            total = live.total_bytes if live and live.total_bytes else d.total_bytes
            free = live.free_bytes if live and live.free_bytes is not None else d.free_bytes
            devices.append(DeviceInfo(
                id=d.id, name=name, backend=backend, engine_name=d.name, total_bytes=total,
                free_bytes=min(free, total),  # integrated GPUs can report more free than their carve-out
                utilization=live.utilization if live else None,
                temperature_c=live.temperature_c if live else None,
                failed=failed,
            ))
    devices.append(cpu_device(budget))
    return devices
