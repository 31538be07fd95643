"""The hive's side of GPU + CPU offload (rbee/hive/offload_plan.py): where a worker goes, and how many of its
layers, given what devices_for chose and what was asked."""

from __future__ import annotations

from rbee.contracts.hives import DeviceInfo
from rbee.hive.estimate import offload
from rbee.hive.offload_plan import plan, split_asked

MiB = 2**20
GPU = DeviceInfo(id="cuda0", name="card", backend="cuda", engine_name="CUDA0", total_bytes=4096 * MiB,
                 free_bytes=3072 * MiB)
BIG = DeviceInfo(id="cuda1", name="big card", backend="cuda", engine_name="CUDA1", total_bytes=24576 * MiB,
                 free_bytes=2048 * MiB)
CPU = DeviceInfo(id="cpu", name="CPU", total_bytes=65536 * MiB)
NEED = 10240 * MiB


def test_what_is_asked_decides_whether_layers_go_to_ram() -> None:
    assert split_asked("cuda0+cpu") == ("cuda0", True) and split_asked("CUDA0+CPU") == ("CUDA0", True)
    assert split_asked("cuda0+cuda1") == ("cuda0+cuda1", False) and split_asked(None) == (None, False)
    assert split_asked("cpu") == ("cpu", False)
    # Asked with RAM: planned over the GPU's free memory, as the queen plans it.
    with_ram = plan([GPU], [GPU, CPU], "cuda0", True, NEED, 32)
    assert with_ram.offload == offload(NEED, 32, 3072 * MiB) and with_ram.device == "cuda0+cpu"
    assert with_ram.offload is not None and with_ram.shares(NEED) == (with_ram.offload.gpu, with_ram.offload.cpu)
    # A GPU asked for alone that is too small: the rest in RAM rather than a worker that cannot load.
    pinned = plan([GPU], [GPU, CPU], "cuda0", False, NEED, 32)
    assert pinned.device == "cuda0+cpu" and pinned.offload == with_ram.offload
    # ... but one whose total holds it goes wholly there, whatever its free memory says just now.
    assert plan([BIG], [BIG, CPU], "cuda1", False, NEED, 32).device == "cuda1"
    # The CPU asked for: never a GPU.
    assert plan([CPU], [GPU, CPU], "cpu", False, NEED, 32).device == "cpu"


def test_unasked_a_worker_no_gpu_holds_offloads_onto_the_roomiest_gpu() -> None:
    placed = plan([CPU], [GPU, BIG, CPU], None, False, NEED, 32)
    split = offload(NEED, 32, 3072 * MiB)
    assert split is not None and placed.gpus == (GPU,) and placed.offload == split  # the most free, not the largest
    assert placed.describe() == f"cuda0 {split.gpu_layers}/33 layers + cpu {33 - split.gpu_layers}/33"
    assert plan([CPU], [GPU, CPU], None, False, NEED, None).device == "cpu"  # no layer count: the CPU alone
    assert plan([CPU], [CPU], None, False, NEED, 32).device == "cpu"  # no GPU at all
