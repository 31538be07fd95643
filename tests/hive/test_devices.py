"""Device detection: the parsers against outputs recorded on real machines (tests/data/hardware, sources in
its SOURCES.md), and detection on this machine, which has no GPU."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from rbee.hive import devices
from rbee.hive.devices import EngineDevice

DATA = Path(__file__).resolve().parent.parent / "data" / "hardware"
MiB = 2**20


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def test_list_devices_with_four_cuda_gpus_skips_the_log_lines() -> None:
    found = devices.parse_list_devices(recorded("list_devices_cuda_2gpu.txt"))
    assert [(d.name, d.id, d.backend, d.index) for d in found] == [
        ("CUDA0", "cuda0", "cuda", 0), ("CUDA1", "cuda1", "cuda", 1), ("CUDA2", "cuda2", "cuda", 2),
        ("CUDA3", "cuda3", "cuda", 3)]
    assert found[0].description == "NVIDIA GeForce RTX 3090"
    assert (found[0].total_bytes, found[0].free_bytes) == (24154 * MiB, 23892 * MiB)
    assert found[3].description == "Tesla P40" and found[3].total_bytes == 24438 * MiB


def test_list_devices_on_apple_silicon_keeps_metal_and_leaves_out_blas() -> None:
    found = devices.parse_list_devices(recorded("list_devices_metal.txt"))
    assert [(d.name, d.backend, d.is_gpu) for d in found] == [("Metal", "metal", True), ("BLAS", "blas", False)]
    assert found[0].description == "Apple M4 Max" and found[0].total_bytes == 98304 * MiB


def test_list_devices_with_vulkan_on_windows() -> None:
    found = devices.parse_list_devices(recorded("list_devices_vulkan.txt"))
    assert [(d.name, d.id, d.backend, d.description) for d in found] == [
        ("Vulkan0", "vulkan0", "vulkan", "NVIDIA GeForce RTX 4060 Laptop GPU")]
    assert found[0].free_bytes == 7189 * MiB


def test_list_devices_of_a_cpu_build_is_empty() -> None:
    assert devices.parse_list_devices("Available devices:\n  (none)\n") == []
    assert devices.parse_list_devices("error: invalid argument: --list-devices\n") == []


def test_nvidia_smi_csv_with_header_and_units() -> None:
    found = devices.parse_nvidia_smi(recorded("nvidia_smi_query.csv"))
    assert [(r.index, r.name, r.total_bytes, r.free_bytes) for r in found] == [
        (0, "NVIDIA GeForce RTX 4070 Laptop GPU", 8188 * MiB, 7948 * MiB),
        (1, "NVIDIA GeForce RTX 5070 Ti", 16303 * MiB, 15799 * MiB)]
    assert found[0].utilization is None and found[0].temperature_c is None  # not asked for in that run


def test_rocm_smi_json() -> None:
    found = devices.parse_rocm_smi(recorded("rocm_smi_meminfo.json"))
    assert [(r.index, r.name, r.total_bytes, r.free_bytes) for r in found] == [
        (0, "AMD Radeon AI PRO R9700", 34208743424, 34208743424 - 889229312),
        (1, "AMD Ryzen 9 9950X3D 16-Core Processor", 2147483648, 2147483648 - 45359104)]
    with pytest.raises(devices.ToolFailed, match="not JSON"):
        devices.parse_rocm_smi("ERROR: GPU[0] : Unable to read VRAM\n")


def test_system_profiler_names_the_apple_chip() -> None:
    assert devices.parse_system_profiler(recorded("system_profiler_displays.json")) == "Apple M3 Max (40-core GPU)"
    assert devices.parse_system_profiler("{}") is None and devices.parse_system_profiler("not json") is None


async def test_a_failing_driver_marks_its_devices_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real nvidia-smi's words when its driver stops answering, from a script standing in for it."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {DATA / 'nvidia_smi_error.txt'}\nexit 15\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    listed = devices.parse_list_devices(recorded("list_devices_cuda_2gpu.txt"))
    found = await devices.detect(listed, budget=None)
    assert [d.id for d in found] == ["cuda0", "cuda1", "cuda2", "cuda3", "cpu"]
    failed = found[0].failed or ""
    assert "Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error" in failed
    assert all(d.failed for d in found[:4]) and found[4].failed is None
    # It answers again, with the figures of a machine that has two of those GPUs.
    smi.write_text(f"#!/bin/sh\ncat {DATA / 'nvidia_smi_query.csv'}\n")
    found = await devices.detect(listed[:2], budget=None)
    assert [(d.id, d.name, d.free_bytes, d.failed) for d in found[:2]] == [
        ("cuda0", "NVIDIA GeForce RTX 4070 Laptop GPU", 7948 * MiB, None),
        ("cuda1", "NVIDIA GeForce RTX 5070 Ti", 15799 * MiB, None)]
    assert found[0].engine_name == "CUDA0" and found[0].backend == "cuda"


async def test_this_machine_is_a_cpu_hive(llama_server: Path) -> None:
    listed = await devices.engine_devices(llama_server)
    assert [d for d in listed if d.is_gpu] == []  # the CPU build here lists no GPU: that is not an error
    found = await devices.detect(listed, budget=2**30)
    assert [(d.id, d.backend, d.engine_name, d.total_bytes) for d in found] == [("cpu", "cpu", None, 2**30)]
    assert found[0].name == f"CPU ({psutil.cpu_count()} threads)" and found[0].free_bytes is not None


def test_engine_device_names() -> None:
    assert EngineDevice("ROCm1", "AMD Radeon", 1, 1).backend == "rocm"
    assert EngineDevice("MTL0", "Apple M5", 1, 1).backend == "metal"
    assert EngineDevice("SYCL0", "Intel Arc", 1, 1).id == "sycl0"


def test_each_device_is_driven_by_the_build_that_lists_it() -> None:
    cuda, vulkan, cpu = Path("/e/cuda/llama-server"), Path("/e/vulkan/llama-server"), Path("/e/cpu/llama-server")
    cuda_listed = devices.parse_list_devices(recorded("list_devices_cuda_2gpu.txt"))
    vulkan_listed = devices.parse_list_devices(recorded("list_devices_vulkan.txt"))
    # The Vulkan build also sees the 3090 the CUDA build drives: the same card under another name.
    same_card = EngineDevice("Vulkan1", "NVIDIA GeForce RTX 3090", 24154 * MiB, 23000 * MiB)
    chosen, engine_for = devices.assign_engines([(cuda, cuda_listed), (vulkan, [*vulkan_listed, same_card]),
                                                 (cpu, [])])
    assert [d.id for d in chosen] == ["cuda0", "cuda1", "cuda2", "cuda3", "vulkan0"]
    assert {k: v.parent.name for k, v in engine_for.items()} == {
        "cuda0": "cuda", "cuda1": "cuda", "cuda2": "cuda", "cuda3": "cuda", "vulkan0": "vulkan", "cpu": "cpu"}
    # Without a CPU build the main engine runs the CPU workers; a device two builds list goes to the first.
    chosen, engine_for = devices.assign_engines([(cuda, cuda_listed[:1]), (Path("/other"), cuda_listed)])
    assert engine_for["cpu"] == cuda and engine_for["cuda0"] == cuda and engine_for["cuda1"] == Path("/other")
    # A build whose listing failed (None) drives nothing; the CPU goes to one that answered, if any.
    assert devices.assign_engines([(cuda, None), (cpu, [])]) == ([], {"cpu": cpu})
    assert devices.assign_engines([(cuda, None), (vulkan, vulkan_listed)])[1] == {"vulkan0": vulkan, "cpu": vulkan}
    assert devices.assign_engines([(cuda, None)]) == ([], {"cpu": cuda})
    assert devices.assign_engines([]) == ([], {})


async def test_an_integrated_gpu_never_has_more_free_than_total() -> None:
    # Unified-memory APUs can report more free memory than their carve-out (seen with ROCm on Ryzen AI Max).
    apu = EngineDevice("Vulkan0", "AMD Radeon Graphics (RADV GFX1151)", 120000 * MiB, 124704 * MiB)
    found = await devices.detect([apu], budget=None)
    assert (found[0].id, found[0].total_bytes, found[0].free_bytes) == ("vulkan0", 120000 * MiB, 120000 * MiB)


async def test_a_build_whose_listing_failed_is_asked_again_later(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A `--list-devices` that fails (a busy machine timing out, say) is not final: a minute later it is asked
    again, and the build's GPUs appear."""
    from rbee.hive import machine, service

    listing = tmp_path / "listing.txt"
    engine = tmp_path / "llama-server"
    engine.write_text(f"""#!/bin/sh
[ "$1" = --version ] && {{ echo 'version: 1 (abc)'; exit 0; }}
[ -f {listing} ] && exec cat {listing}
echo 'ggml_cuda_init: failed to initialize CUDA: unknown error' >&2; exit 1
""")
    engine.chmod(0o755)
    monkeypatch.setenv("RBEE_LLAMA_SERVER", str(engine))
    monkeypatch.setenv("RBEE_ENGINES_DIR", str(tmp_path / "engines"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi: the listing's own figures
    hive = service.Hive(state=tmp_path / "state")
    assert [d.id for d in await hive.refresh_devices()] == ["cpu"]
    listing.write_text(recorded("list_devices_cuda_2gpu.txt"))
    assert [d.id for d in await hive.refresh_devices()] == ["cpu"]  # not asked again at once
    monkeypatch.setattr(machine, "LIST_RETRY_S", 0.0)  # a minute later
    assert [d.id for d in await hive.refresh_devices()] == ["cuda0", "cuda1", "cuda2", "cuda3", "cpu"]


# A machine with two kinds of card, as in koboldcpp#1023 (nvidia-smi and llama.cpp printed both): nvidia-smi
# counts in PCI order (GTX 1660 SUPER, then RTX 3090); CUDA's default counts the fastest first.
SLOW, FAST = "NVIDIA GeForce GTX 1660 SUPER", "NVIDIA GeForce RTX 3090"
SMI = [devices.Reading(0, SLOW, 6144 * MiB, 6000 * MiB), devices.Reading(1, FAST, 24576 * MiB, 24000 * MiB)]


def test_readings_pair_with_engine_devices_by_number_then_by_name() -> None:
    pci_order = [EngineDevice("CUDA0", SLOW, 6144 * MiB, 1), EngineDevice("CUDA1", FAST, 24576 * MiB, 1)]
    fastest_first = [EngineDevice("CUDA0", FAST, 24576 * MiB, 1), EngineDevice("CUDA1", SLOW, 6144 * MiB, 1)]
    names = lambda matched: {engine: r.name for engine, r in matched.items()}  # noqa: E731
    assert names(devices.match_readings(pci_order, SMI)) == {"CUDA0": SLOW, "CUDA1": FAST}
    # Counted fastest first, the numbers disagree with nvidia-smi's: the names pair them.
    assert names(devices.match_readings(fastest_first, SMI)) == {"CUDA0": FAST, "CUDA1": SLOW}
    # CUDA_VISIBLE_DEVICES=1 hides the 1660: the engine's CUDA0 is nvidia-smi's 1.
    assert names(devices.match_readings([EngineDevice("CUDA0", FAST, 1, 1)], SMI, visible=[1])) == {"CUDA0": FAST}
    # Names that never match (rocm-smi and HIP name AMD cards differently) leave the numbers in charge.
    amd = [EngineDevice("ROCm0", "AMD Radeon RX 7900 XTX", 1, 1), EngineDevice("ROCm1", "AMD Radeon Graphics", 1, 1)]
    smi = devices.parse_rocm_smi(recorded("rocm_smi_meminfo.json"))
    assert {k: r.index for k, r in devices.match_readings(amd, smi).items()} == {"ROCm0": 0, "ROCm1": 1}
    # Two identical cards: by number; a card the tool does not report has no reading.
    twins = [EngineDevice(f"CUDA{i}", FAST, 1, 1) for i in range(3)]
    same = [devices.Reading(0, FAST), devices.Reading(1, FAST)]
    assert {k: r.index for k, r in devices.match_readings(twins, same).items()} == {"CUDA0": 0, "CUDA1": 1}


def test_engines_count_cuda_cards_as_nvml_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    env = devices.engine_env(LLAMA_API_KEY="k")
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["LLAMA_API_KEY"] == "k"
    assert devices.cuda_visible(env) == [2, 0]
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # the user's own choice is kept; names pair then
    kept = devices.engine_env()
    assert kept["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST" and devices.cuda_visible(kept) is None
    assert devices.cuda_visible({"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-8f2c"}) is None
    assert devices.cuda_visible({"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}) is None
