"""One worker per device, end to end, with two simulated NVIDIA GPUs (tests/fixtures/fake_gpu.py: the real
engine answers on the CPU; only the device layer is simulated) and the real queen, hive and CLI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.hive import engine
from tests.conftest import Queen, wait_for
from tests.fixtures.fake_gpu import FAST_CARD, SLOW_CARD, FakeGPUs, fake_gpus, fake_mixed_gpus

MiB = 2**20
CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def gpus(tmp_path: Path, llama_server: Path) -> Iterator[FakeGPUs]:
    yield fake_gpus(tmp_path / "gpus", llama_server)


def devices_of(queen: Queen) -> dict[str, dict[str, object]]:
    hive = next(h for h in httpx.get(f"{queen.url}/v1/hives", timeout=10).json() if h["alias"] == "localhost")
    return {d["id"]: d for d in hive["devices"]}


def test_workers_go_one_per_device_and_a_failed_driver_is_avoided(make_queen: Callable[..., Queen],
                                                                  gpus: FakeGPUs, tiny_model: Path) -> None:
    queen = make_queen(RBEE_LLAMA_SERVER=str(gpus.engine), PATH=f"{gpus.folder}:{os.environ['PATH']}",
                       RBEE_HEARTBEAT_MS="300", RBEE_MAX_REPLICAS="1").start()

    # Detected: what the engine can use, named and measured by nvidia-smi; and the CPU.
    found = devices_of(queen)
    assert list(found) == ["cuda0", "cuda1", "cpu"]
    assert found["cuda0"]["name"] == "NVIDIA GeForce RTX 4070 Laptop GPU" and found["cuda0"]["engine_name"] == "CUDA0"
    assert (found["cuda0"]["total_bytes"], found["cuda0"]["free_bytes"]) == (8188 * MiB, 7948 * MiB)
    assert found["cuda1"]["free_bytes"] == 15799 * MiB and found["cpu"]["backend"] == "cpu"

    # A request's worker goes to the device where it fits best: all its layers on cuda0.
    answer = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                        json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 4})
    assert answer.status_code == 200
    assert [(w["model"], w["device"]) for w in queen.workers()] == [("tiny", "cuda0")]
    assert gpus.chosen_devices() == ["CUDA0"]

    # Asked for by hand: a device that exists, and one that does not (refused with the list).
    placed = queen.cli("worker", "start", "tiny", "--device", "cuda1", timeout=120)
    assert placed.returncode == 0, placed.stderr
    assert "on localhost:cuda1" in placed.stderr and gpus.chosen_devices() == ["CUDA0", "CUDA1"]
    missing = queen.cli("worker", "start", "tiny", "--device", "cuda7", timeout=60)
    assert missing.returncode != 0
    assert "no device 'cuda7'" in missing.stderr and "cuda0 (NVIDIA GeForce RTX 4070 Laptop GPU)" in missing.stderr
    shown = queen.cli("hive", "status", "localhost", check=True).stdout
    assert "cuda0: NVIDIA GeForce RTX 4070 Laptop GPU" in shown and "cuda1" in shown and "cpu: CPU" in shown

    # The driver stops answering: its devices are failed, and new workers go to the CPU.
    gpus.driver_fails()
    assert wait_for(lambda: all(devices_of(queen)[d]["failed"] for d in ("cuda0", "cuda1")), 10)
    failed = devices_of(queen)["cuda0"]["failed"]
    assert "Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error" in str(failed)
    for w in queen.workers():
        httpx.delete(f"{queen.url}/v1/workers/{w['id']}", timeout=30)
    again = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                       json={"model": "tiny", "messages": CHAT, "max_tokens": 4})
    assert again.status_code == 200
    assert [w["device"] for w in queen.workers() if w["state"] == "ready"] == ["cpu"]
    assert gpus.chosen_devices()[-1] == "none"
    refused = queen.cli("worker", "start", "tiny", "--device", "cuda0", timeout=60)
    assert refused.returncode != 0 and "has failed" in refused.stderr
    assert "FAILED" in queen.cli("hive", "status", "localhost", check=True).stdout
    assert "failed" in queen.log.read_text() and "no new workers go there" in queen.log.read_text()

    # It answers again: the devices are back.
    gpus.driver_recovers()
    assert wait_for(lambda: not any(d["failed"] for d in devices_of(queen).values()), 10)
    metrics = httpx.get(f"{queen.url}/metrics", timeout=10).text
    assert 'rbee_hive_memory_bytes{device="cuda1",hive="localhost",kind="free"}' in metrics


def test_a_device_name_means_the_same_card_to_rbee_nvidia_smi_and_the_engine(
        make_queen: Callable[..., Queen], llama_server: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A GTX 1660 SUPER in the first slot, an RTX 3090 in the second: CUDA's default counts the 3090 first,
    # nvidia-smi counts it second. Without CUDA_DEVICE_ORDER=PCI_BUS_ID on the engines, rbee would show
    # the 1660's name and memory for "cuda0" and then run a worker pinned there on the 3090.
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    gpus = fake_mixed_gpus(tmp_path / "gpus", llama_server)
    queen = make_queen(RBEE_LLAMA_SERVER=str(gpus.engine), PATH=f"{gpus.folder}:{os.environ['PATH']}").start()
    found = devices_of(queen)
    assert [(d, found[d]["name"], found[d]["total_bytes"]) for d in ("cuda0", "cuda1")] == [
        ("cuda0", SLOW_CARD, 6144 * MiB), ("cuda1", FAST_CARD, 24576 * MiB)]
    for device in ("cuda1", "cuda0"):
        placed = queen.cli("worker", "start", str(tiny_model), "--device", device, timeout=120)
        assert placed.returncode == 0, placed.stderr
    assert gpus.chosen_devices() == ["CUDA1", "CUDA0"]
    assert gpus.chosen_cards() == [FAST_CARD, SLOW_CARD]  # the cards the engine really put them on
    shown = queen.cli("hive", "status", "localhost", check=True).stdout
    rows = {line.split("│")[3].split(":")[0].strip(): line for line in shown.splitlines() if ": " in line}
    assert FAST_CARD in rows["cuda1"] and "localhost-w1 (tiny)" in rows["cuda1"]  # started first, on cuda1

    # A model pinned to a spread gets one, though one card would hold it; layers go by the cards' sizes.
    for w in queen.workers():
        httpx.delete(f"{queen.url}/v1/workers/{w['id']}", timeout=30)
    queen.cli("model", "set", "tiny", "--device", "CUDA0+CUDA1", check=True)  # as llama.cpp names them
    answer = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                        json={"model": "tiny", "messages": CHAT, "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    assert [w["device"] for w in queen.workers() if w["state"] == "ready"] == ["cuda0+cuda1"]
    assert gpus.chosen_cards()[-1] == f"{SLOW_CARD},{FAST_CARD}" and gpus.tensor_splits()[-1] == "6144,24576"


def test_a_model_larger_than_each_gpu_spreads_over_them(
        make_queen: Callable[..., Queen], llama_server: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two made-up 640 MiB cards; the tiny model with 48k of context needs ~655 MiB: more than either holds,
    # less than both do with a runtime on each. The CPU could hold it, but GPUs together come first.
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    card = "NVIDIA Made-up Card"
    gpus = fake_mixed_gpus(tmp_path / "gpus", llama_server, cards=[(card, 640, 630), (card, 640, 630)])
    queen = make_queen(RBEE_LLAMA_SERVER=str(gpus.engine), PATH=f"{gpus.folder}:{os.environ['PATH']}",
                       RBEE_WORKER_CONTEXT="49152", RBEE_WORKER_SLOTS="1").start()
    answer = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                        json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]  # real inference, by the engine it started
    [worker] = queen.workers()
    assert worker["device"] == "cuda0+cuda1"
    assert gpus.chosen_devices() == ["CUDA0,CUDA1"] and gpus.tensor_splits() == ["640,640"]
    held = worker["device_memory"]
    assert set(held) == {"cuda0", "cuda1"} and abs(held["cuda0"] - held["cuda1"]) <= 1
    assert sum(held.values()) == worker["memory_bytes"] > 640 * MiB

    # It shows under both GPUs, with its share on each bar, and in /metrics.
    shown = queen.cli("hive", "status", "localhost", check=True).stdout
    rows = {line.split("│")[3].split(":")[0].strip(): line for line in shown.splitlines() if ": " in line}
    for device in ("cuda0", "cuda1"):
        assert f"{worker['id']} (tiny)" in rows[device], shown
    assert f"{worker['id']} (tiny)" not in rows["cpu"]
    metrics = httpx.get(f"{queen.url}/metrics", timeout=10).text
    used = {line.split('device="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("rbee_hive_memory_bytes{") and 'kind="used"' in line}
    assert used == {"cuda0": held["cuda0"], "cuda1": held["cuda1"], "cpu": 0}

    # By hand: a spread over GPUs is asked for like a device; one that is not a GPU, or not there, is refused.
    for asked, said in (("cpu+cuda0", "spreads over different GPUs"), ("cuda0+cuda5", "no device 'cuda5'")):
        refused = queen.cli("worker", "start", "tiny", "--device", asked, timeout=60)
        assert refused.returncode != 0 and said in refused.stderr and "cuda1 (NVIDIA Made-up Card)" in refused.stderr
    placed = queen.cli("worker", "start", "tiny", "--device", "cuda1+cuda0", timeout=120)
    assert placed.returncode == 0, placed.stderr
    assert "on localhost:cuda1+cuda0" in placed.stderr and gpus.chosen_devices()[-1] == "CUDA1,CUDA0"
    # Without --device the hive chooses as the queen would: too large for one card, so both.
    placed = queen.cli("worker", "start", "tiny", timeout=120)
    assert placed.returncode == 0 and "on localhost:cuda0+cuda1" in placed.stderr, placed.stderr


def test_a_cuda_build_and_a_cpu_build_each_drive_their_own_devices(
        make_queen: Callable[..., Queen], gpus: FakeGPUs, llama_server: Path, rpc_server: Path,
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two of rbee's builds side by side, where `rbee engine install --backend cuda|cpu` puts them: the
    # simulated CUDA one, and the real CPU one. No engine is configured: the hive finds both.
    smi = tmp_path / "bin" / "nvidia-smi"  # nvidia-smi on PATH, but not the simulated engine beside it
    smi.parent.mkdir()
    smi.symlink_to(gpus.folder / "nvidia-smi")
    path = f"{smi.parent}:{os.environ['PATH']}"
    monkeypatch.setenv("PATH", path)  # the build ids depend on whether an NVIDIA driver is here, as for the hive
    monkeypatch.setenv("RBEE_ENGINES_DIR", str(tmp_path / "engines"))
    cuda_build, cpu_build = engine.built_binary("cuda"), engine.built_binary("cpu")
    for build, binary in ((cuda_build, gpus.engine), (cpu_build, llama_server)):
        build.parent.mkdir(parents=True)
        build.symlink_to(binary)
        (build.parent / "ggml-rpc-server").symlink_to(rpc_server)  # a build is complete with both
    queen = make_queen(RBEE_LLAMA_SERVER="", RBEE_ENGINES_DIR=str(tmp_path / "engines"), PATH=path).start()

    status = queen.cli("engine", "status", check=True).stdout
    assert f"localhost: {cuda_build} (built)" in status and f"also built: cpu {cpu_build}" in status
    assert list(devices_of(queen)) == ["cuda0", "cuda1", "cpu"]

    # A GPU worker runs on the CUDA build, a CPU worker on the CPU build (which the simulated GPUs never see).
    for device in ("cuda1", "cpu"):
        placed = queen.cli("worker", "start", str(tiny_model), "--device", device, timeout=120)
        assert placed.returncode == 0, placed.stderr
    assert gpus.chosen_devices() == ["CUDA1"]  # through the CUDA build; the CPU worker did not pass there
    cpu_worker = next(w for w in queen.workers() if w["device"] == "cpu")
    assert psutil.Process(int(str(cpu_worker["pid"]))).cmdline()[:1] == [str(cpu_build)]
    for _ in range(2):
        answer = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                            json={"model": "tiny", "messages": CHAT, "max_tokens": 4})
        assert answer.status_code == 200
