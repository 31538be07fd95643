"""A spread across hives whose helper lends two GPUs (issue 21 point 1): the seed's "server with two 3090s".

Two hosts in network namespaces get hives by `rbee hive install`; then h2's hive is restarted with two
simulated CUDA GPUs (tests/fixtures/fake_gpu.py: its llama-server lists them, its nvidia-smi reports them, its
ggml-rpc-server takes `-d CUDA0,CUDA1` and lends as many CPU devices in their place, so every layer is really
computed). Each card is a runtime plus a fifth of the model's need, h2's RAM budget too small to lend, h1's
budget 80 % of the need: no hive holds the model, and h2 must lend both GPUs. h2 runs ONE rpc-server lending
both (llama.cpp 0.3.36 serves several devices per rpc-server; see rbee/hive/rpc_servers.py), h1 runs
llama-server with `--rpc` (one endpoint), `--device RPC0,RPC1` and one share per GPU in `--tensor-split`, and
the answer equals one host's, token for token.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from rbee.hive.estimate import OVERHEAD
from tests.conftest import Queen, wait_for
from tests.e2e.test_fleet_catalog import pull_job
from tests.e2e.test_fleet_spread_run import complete, report, stop_all
from tests.e2e.test_fleet_spreads import set_budget
from tests.fixtures.fake_gpu import FAST_CARD, FakeGPUs, fake_mixed_gpus
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fleet import installed_fleet, padded_tiny_model
from tests.fixtures.lan import USER_PATH, Host, Lan

MIB = 2**20
MODEL = "rbee-test/spreadgpus-GGUF:Q4_K_M"
pytestmark = pytest.mark.timeout(1200)  # two hive installs, then the lan lock other netns tests share


@pytest.fixture(scope="module")
def fleet(lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    with FakeHub().start(lan.gateway) as hub:
        hub.add_repo(MODEL.split(":")[0], {"m-Q4_K_M.gguf": padded_tiny_model(tmp_path_factory.mktemp("m"))})
        with installed_fleet(lan, home, llama_server, hub.env(home)) as queen:  # the default link bounds
            assert pull_job(queen, MODEL, "h1")[-1]["type"] == "done"
            yield queen


@pytest.fixture(scope="module")
def alone(fleet: Queen) -> str:
    """The answer of one host's worker (h1's CPU), the reference; then no worker is left."""
    fleet.cli("worker", "start", MODEL, "-a", "h1", "--device", "cpu", check=True, timeout=300)
    try:
        text = complete(fleet, MODEL)
        assert text.strip()
        return text
    finally:
        stop_all(fleet)


def _with_gpus(fleet: Queen, lan: Lan, host: Host, card_mib: int) -> FakeGPUs:
    """`host`'s hive restarted with two simulated GPUs of `card_mib` each and a 1 MiB RAM budget."""
    (real,) = (host.home / ".local" / "share" / "rbee" / "engines").glob("llama.cpp-*/bin/llama-server")
    folder = host.home / "gpus"
    gpus = fake_mixed_gpus(folder, real, [(FAST_CARD, card_mib, card_mib), (FAST_CARD, card_mib, card_mib)])
    for path in [folder, *folder.iterdir()]:
        shutil.chown(path, host.user, host.user)
    config = host.home / ".config" / "rbee" / "hive.toml"
    lines = [line for line in config.read_text().splitlines() if not line.startswith("memory_budget")]
    config.write_text("\n".join([*lines, 'memory_budget = "1MiB"']) + "\n")
    rbee = str(host.home / ".local" / "share" / "rbee" / "venv" / "bin" / "rbee")
    env = {"RBEE_LLAMA_SERVER": str(gpus.engine), "PATH": f"{folder}:{USER_PATH}"}
    restarted = lan.run(host, rbee, "hive-agent", "restart", env=env, timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr

    def two_gpus() -> bool:
        hive = next((h for h in httpx.get(f"{fleet.url}/v1/hives", timeout=10).json() if h["alias"] == host.name),
                    None)
        return hive is not None and hive["state"] == "ready" and \
            [d["id"] for d in hive.get("devices") or []] == ["cuda0", "cuda1", "cpu"]
    assert wait_for(two_gpus, 90), httpx.get(f"{fleet.url}/v1/hives", timeout=10).text
    return gpus


@pytest.fixture(scope="module")
def gpus(fleet: Queen, lan: Lan, alone: str) -> FakeGPUs:
    """h1 holds 80 % of the need in RAM; h2's GPUs a runtime and a fifth of it each (see the module docstring)."""
    fleet.cli("model", "set", MODEL, "--ctx", "65536", "--slots", "1", check=True, timeout=60)
    need = int(httpx.post(f"{fleet.url}/v1/spreads/plan", json={"model": MODEL}, timeout=120).json()["need"])
    set_budget(fleet, lan.host("h1"), f"{need * 4 // 5 // MIB}MiB")
    return _with_gpus(fleet, lan, lan.host("h2"), (OVERHEAD + need // 5) // MIB)


def _llama_server_args(lan: Lan, host: str) -> list[str]:
    """The command line of the llama-server that `host`'s user runs with --rpc (a spread's)."""
    found = []
    for proc in psutil.process_iter(["username", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if proc.info["username"] == lan.host(host).user and "--rpc" in argv:
            found.append(list(argv))
    assert len(found) == 1, found
    return found[0]


def _one_rpc_server(lan: Lan) -> dict[str, Any]:
    (lent,) = report(lan, "h2")["rpc_servers"]
    assert lent["state"] == "ready", lent
    assert [d["device"] for d in lent["devices"]] == ["cuda0", "cuda1"] and all(
        d["memory"] > 0 for d in lent["devices"]), lent
    return dict(lent)


def test_no_hive_holds_it_so_the_helper_lends_both_gpus_through_one_rpc_server(
        fleet: Queen, lan: Lan, gpus: FakeGPUs, alone: str) -> None:
    plan = httpx.post(f"{fleet.url}/v1/spreads/plan", json={"model": MODEL}, timeout=120).json()
    assert plan["spread"] and plan["main"] == "h1" and plan["helpers"] == ["h2"], plan["reason"]
    assert [(d["hive"], d["device"], d["order"]) for d in plan["devices"]] == [
        ("h2", "cuda0", 0), ("h2", "cuda1", 1), ("h1", "cpu", None)]
    assert complete(fleet, MODEL) == alone  # the scheduler's load step spreads it; greedy: the same tokens
    try:
        (worker,) = [w for w in fleet.workers() if w["state"] == "ready"]
        assert worker["hive"] == "h1"
        lent = _one_rpc_server(lan)
        assert gpus.rpc_devices() == ["CUDA0,CUDA1"]  # one process lends both, in the plan's order
        assert "CPU,CPU" in psutil.Process(int(lent["pid"])).cmdline()  # the fake's stand-ins, really computing
        args = _llama_server_args(lan, "h1")
        assert args[args.index("--device") + 1] == "RPC0,RPC1"
        assert len(args[args.index("--rpc") + 1].split(",")) == 1  # one endpoint: h1's dial end of the channel
        shares = [float(s) for s in args[args.index("--tensor-split") + 1].split(",")]
        assert len(shares) == 2 and shares[0] == pytest.approx(shares[1], rel=0.01)  # equal cards, equal shares
        parts = {(p["hive"], p["device"]): p for p in worker["parts"]}
        assert set(parts) == {("h2", "cuda0"), ("h2", "cuda1"), ("h1", "cpu")}
        booked = {d["device"]: d["memory"] for d in lent["devices"]}
        assert booked == {d: parts[("h2", d)]["memory_bytes"] for d in ("cuda0", "cuda1")}
        metrics = httpx.get(f"{fleet.url}/metrics", timeout=10).text
        for device in ("cuda0", "cuda1"):
            assert f'rbee_worker_device_share{{device="{device}",hive="h2",model="{MODEL}",' \
                   f'worker="{worker["id"]}"}}' in metrics
        shown = fleet.cli("hive", "status", "h2", "--json", timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert [w["id"] for w in json.loads(shown.stdout)["worker_list"]] == [worker["id"]]
        pid = int(lent["pid"])
    finally:
        stop_all(fleet)
    # stopped on request: the one rpc-server (both GPUs' lender) and every channel end are gone
    assert wait_for(lambda: not report(lan, "h2")["rpc_servers"] and not report(lan, "h2")["channels"]
                    and not report(lan, "h1")["channels"], 30)
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30)


def test_a_forced_spread_over_a_helpers_two_gpus(fleet: Queen, lan: Lan, gpus: FakeGPUs, alone: str) -> None:
    started = fleet.cli("worker", "start", MODEL, "--device", "h1:cpu+h2:cuda0+h2:cuda1", timeout=300)
    said = started.stdout + started.stderr
    assert started.returncode == 0 and "Traceback" not in said, said
    assert "h2:cuda0" in said and "h2:cuda1" in said and "(rpc)" in said, said
    try:
        _one_rpc_server(lan)
        assert complete(fleet, MODEL) == alone
    finally:
        stop_all(fleet)
    assert wait_for(lambda: not report(lan, "h2")["rpc_servers"], 30)


@pytest.mark.parametrize(("device", "message"), [
    ("h1:cpu+h2:cuda0+h2:cuda7", "h2:cuda7: hive 'h2' has no device 'cuda7' (it has: cuda0, cuda1, cpu)"),
    ("h1:cpu+h2:cpu", "h2:cpu: device 'cpu' of hive 'h2' has 0.00 GiB free, not more than the 0.25 GiB"),
])
def test_a_forced_helper_device_not_there_or_without_room_is_refused_by_name(
        fleet: Queen, gpus: FakeGPUs, device: str, message: str) -> None:
    refused = fleet.cli("worker", "start", MODEL, "--device", device, timeout=120)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and message in said and "Traceback" not in said, said
    assert not [w for w in fleet.workers() if w["state"] in ("ready", "starting")]


def test_the_helpers_rpc_server_failing_ends_the_spread_everywhere(fleet: Queen, lan: Lan, gpus: FakeGPUs) -> None:
    assert complete(fleet, MODEL)  # spread again by the load step
    (worker,) = [w for w in fleet.workers() if w["state"] == "ready"]
    pid = int(_one_rpc_server(lan)["pid"])
    psutil.Process(pid).kill()  # the lender of both GPUs dies

    def failed() -> dict[str, Any] | None:
        return next((w for w in fleet.workers() if w["id"] == worker["id"] and w["state"] == "error"), None)
    assert wait_for(lambda: failed() is not None, 60), fleet.workers()
    assert "h2" in str((failed() or {}).get("error")), failed()
    assert wait_for(lambda: not [s for s in report(lan, "h2")["rpc_servers"] if s["state"] != "error"]
                    and not report(lan, "h2")["channels"] and not report(lan, "h1")["channels"], 60)
