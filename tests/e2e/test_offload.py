"""GPU + CPU offload within one hive (issue 21 point 0), end to end: a made-up 400 MiB card (tests/fixtures/
fake_gpu.py: the real CPU engine answers, only the device layer is simulated), the real queen, hive and CLI.

The tiny model with 48k of context needs ~655 MiB: more than the card holds and, with RBEE_MEMORY_BUDGET at
400 MiB, more than RAM alone may give it, so it runs only with some layers on the card and the rest in RAM."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rbee.hive.estimate import offload
from tests.conftest import Queen
from tests.e2e.test_devices import CHAT, MiB
from tests.fixtures.fake_gpu import FakeGPUs, fake_mixed_gpus
from tests.fixtures.tiny_gguf import N_LAYER


@pytest.fixture
def small_card(tmp_path: Path, llama_server: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGPUs:
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return fake_mixed_gpus(tmp_path / "gpus", llama_server, cards=[("NVIDIA Made-up Card", 400, 390)])


def _queen(make_queen: Callable[..., Queen], gpus: FakeGPUs, **env: str) -> Queen:
    settings = {"RBEE_LLAMA_SERVER": str(gpus.engine), "PATH": f"{gpus.folder}:{os.environ['PATH']}",
                "RBEE_WORKER_CONTEXT": "49152", "RBEE_WORKER_SLOTS": "1", "RBEE_MEMORY_BUDGET": "400MiB",
                "RBEE_HEARTBEAT_MS": "300"}
    return make_queen(**{**settings, **env}).start()


def _ask(queen: Queen, model: Path) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                      json={"model": str(model), "messages": CHAT, "max_tokens": 4})


def test_a_model_larger_than_the_gpu_runs_with_the_rest_of_its_layers_in_ram(
        make_queen: Callable[..., Queen], small_card: FakeGPUs, tiny_model: Path, tiny_stop_model: Path) -> None:
    queen = _queen(make_queen, small_card)
    answer = _ask(queen, tiny_model)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]  # real inference, by the engine it started
    [worker] = queen.workers()
    plan = offload(int(worker["memory_bytes"]), N_LAYER, 390 * MiB)  # type: ignore[call-overload]
    assert plan is not None and plan.layers == N_LAYER + 1
    assert worker["device"] == "cuda0+cpu" and worker["offload"] == plan.describe("cuda0")
    assert small_card.chosen_devices() == ["CUDA0"] and small_card.gpu_layers() == [str(plan.gpu_layers)]
    # What it holds is booked where the plan puts it: the card's share and the RAM's.
    assert worker["device_memory"] == {"cuda0": plan.gpu, "cpu": plan.cpu}
    metrics = httpx.get(f"{queen.url}/metrics", timeout=10).text
    used = {line.split('device="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("rbee_hive_memory_bytes{") and 'kind="used"' in line}
    assert used == {"cuda0": plan.gpu, "cpu": plan.cpu}
    # The status shows the split, and the worker under both devices.
    listed = queen.cli("worker", "list", check=True).stdout
    assert "cuda0 1/3 layers + cpu 2/3" in listed.replace("\n", ""), listed
    shown = queen.cli("hive", "status", "localhost", check=True).stdout
    rows = {line.split("│")[3].split(":")[0].strip(): line for line in shown.splitlines() if ": " in line}
    shown_as = f"{worker['id']} (tiny: cuda0 1/3 layers + cpu 2/3)"
    assert shown_as in rows["cuda0"] and shown_as in rows["cpu"], shown
    # The estimate (`rbee model info`) shows the same plan.
    detail = json.loads(queen.cli("model", "info", "tiny", "--json", check=True).stdout)
    assert detail["runs_on"] == plan.describe("cuda0") and detail["memory"]["total"] == worker["memory_bytes"]

    # A second model that would overcommit RAM beside it does not start beside it: the idle first is
    # evicted for it (the RAM holds one offloaded part, not two).
    second = _ask(queen, tiny_stop_model)
    assert second.status_code == 200, second.text
    states = {w["model"]: w["state"] for w in queen.workers()}
    assert states == {"tiny": "stopped", "tiny-stop": "ready"} or states == {"tiny-stop": "ready"}, states


def test_no_offload_is_honoured_and_a_model_too_large_for_gpu_and_ram_is_refused_with_the_numbers(
        make_queen: Callable[..., Queen], small_card: FakeGPUs, tiny_model: Path) -> None:
    queen = _queen(make_queen, small_card)
    queen.cli("model", "set", "tiny", "--no-offload", check=True)  # the file enters the catalog as "tiny"
    refused = _ask(queen, tiny_model)
    assert refused.json()["error"]["code"] == "model_too_large", refused.text
    assert "the largest device has 0.39 GiB" in refused.json()["error"]["message"]  # RAM; the card has 0.38
    assert small_card.chosen_devices() == [] and queen.workers() == []
    # Allowed again, but with RAM too small even for the part the card cannot hold: refused, with the numbers.
    tight = _queen(make_queen, small_card, RBEE_MEMORY_BUDGET="100MiB")
    too_large = _ask(tight, tiny_model)
    assert too_large.json()["error"]["code"] == "model_too_large", too_large.text
    assert "but a hive's GPUs and RAM together hold at most 0.48 GiB" in too_large.json()["error"]["message"]
