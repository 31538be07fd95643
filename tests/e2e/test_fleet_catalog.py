"""One fleet, one catalog: models pulled onto, inspected on and removed from remote hives, from the queen.

Two hosts in network namespaces (tests/fixtures/lan.py) get hives by `rbee hive install`; the queen runs no
local hive. The fake hub listens on the LAN bridge, and only the queen's environment names it (HF_ENDPOINT)
and holds the gated repo's token (HF_TOKEN): the hives download from it with the settings each pull brings.
Heartbeats are slow here, so a catalog that changes at once after a pull or rm was refreshed by it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import Queen, wait_for
from tests.fixtures.browser import Tab
from tests.fixtures.fake_hub import FakeHub, HubFile
from tests.fixtures.fleet import installed_fleet, padded_tiny_model
from tests.fixtures.lan import Host, Lan

HEARTBEAT_MS = 5000
TIMEOUT_MS = 30000
HF_SECRET = "hf_fleet_secret_7d2a9c41"
MIB = 2**20


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return padded_tiny_model(tmp_path_factory.mktemp("fleetmodel"))


@pytest.fixture(scope="module")
def hub(lan: Lan, payload: bytes) -> Iterator[FakeHub]:
    with FakeHub().start(lan.gateway) as hub:
        for repo in ("fleet-GGUF", "slow-GGUF", "info-GGUF", "cut-GGUF", "ctrl-c-GGUF", "dash-GGUF"):
            hub.add_repo(f"rbee-test/{repo}", {"m-Q4_K_M.gguf": payload})
        hub.add_repo("rbee-test/gated-GGUF", {"m-Q4_K_M.gguf": payload}, gated_token=HF_SECRET)
        hub.add_repo("rbee-test/huge-GGUF", [HubFile("m-Q4_K_M.gguf", payload, advertised_size=10**15)])
        hub.slow("rbee-test/fleet-GGUF", "m-Q4_K_M.gguf", bytes_per_second=2 * MIB)
        hub.slow("rbee-test/slow-GGUF", "m-Q4_K_M.gguf", bytes_per_second=MIB // 3)
        hub.slow("rbee-test/ctrl-c-GGUF", "m-Q4_K_M.gguf", bytes_per_second=MIB // 3)
        yield hub


@pytest.fixture(scope="module")
def fleet(lan: Lan, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    """A keeper (and its queen, which `rbee hive install` starts) with both hives installed."""
    home = tmp_path_factory.mktemp("keeper")
    with installed_fleet(lan, home, llama_server, {**hub.env(home), "HF_TOKEN": HF_SECRET},
                         HEARTBEAT_MS, TIMEOUT_MS) as queen:
        yield queen


def models_dir(host: Host) -> Path:
    return host.home / ".local" / "share" / "rbee" / "models"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def catalog(queen: Queen, hive: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(f"{queen.url}/v1/catalog", params={"hive": hive}, timeout=10).json()}


def pull_job(queen: Queen, model: str, hive: str, cancel_mid_way: bool = False) -> list[dict[str, Any]]:
    """Start a pull through the queen's API and follow its events to the end (cancelling it mid-way if asked)."""
    job_id = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "model.pull", "model": model, "hive": hive},
                        timeout=10).json()["job_id"]
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{queen.url}/v1/jobs/{job_id}/events", timeout=120) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            events.append(json.loads(line[5:]))
            if cancel_mid_way and events[-1].get("unit") == "bytes" and 0 < events[-1]["current"] < events[-1]["total"]:
                assert httpx.delete(f"{queen.url}/v1/jobs/{job_id}", timeout=10).json()["cancelled"]
                cancel_mid_way = False
    return events


def test_a_pull_onto_a_remote_hive_downloads_there_with_progress(fleet: Queen, lan: Lan, payload: bytes) -> None:
    h1, h2 = lan.hosts
    events = pull_job(fleet, "rbee-test/fleet-GGUF:Q4_K_M", "h1")
    assert events[-1]["type"] == "done", events[-1]
    progress = [e for e in events if e.get("unit") == "bytes"]
    assert any(0 < e["current"] < e["total"] == len(payload) for e in progress), progress
    assert progress[-1]["current"] == len(payload) and progress[-1]["data"]["speed"] > 0
    assert events[-1]["data"]["hive"] == "h1"
    assert (models_dir(h1) / "rbee-test/fleet-GGUF/m-Q4_K_M.gguf").read_bytes() == payload
    assert files_under(models_dir(h2)) == []
    entry = catalog(fleet, "h1")["rbee-test/fleet-GGUF:Q4_K_M"]  # at once, not at the next heartbeat
    assert entry["path"] == str(models_dir(h1) / "rbee-test/fleet-GGUF/m-Q4_K_M.gguf")
    assert "rbee-test/fleet-GGUF:Q4_K_M" not in catalog(fleet, "h2")
    again = fleet.cli("model", "pull", "rbee-test/fleet-GGUF:Q4_K_M", "-a", "h1", check=True)
    assert "already on h1" in again.stderr and "rbee-test/fleet-GGUF:Q4_K_M is on h1" in again.stderr


def test_cancel_mid_download_leaves_nothing_on_the_hive(fleet: Queen, lan: Lan) -> None:
    h2 = lan.host("h2")
    events = pull_job(fleet, "rbee-test/slow-GGUF:Q4_K_M", "h2", cancel_mid_way=True)
    assert events[-1]["type"] == "cancelled", events[-1]
    # the queen's job ends only once the hive's has: its partial download is already gone
    assert files_under(models_dir(h2) / "rbee-test/slow-GGUF") == []
    assert files_under(models_dir(h2) / ".partial") == []
    assert "rbee-test/slow-GGUF:Q4_K_M" not in catalog(fleet, "h2")
    hive_log = (h2.home / ".local/state/rbee/hive.log").read_text()
    assert "pulling rbee-test/slow-GGUF:Q4_K_M for the queen" in hive_log


def test_ctrl_c_on_the_cli_cancels_the_hives_download(fleet: Queen, lan: Lan) -> None:
    h1 = lan.host("h1")
    cli = subprocess.Popen([sys.executable, "-m", "rbee", "model", "pull", "rbee-test/ctrl-c-GGUF:Q4_K_M", "-a", "h1"],
                           env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def downloading() -> bool:
        jobs = httpx.get(f"{fleet.url}/v1/jobs", timeout=10).json()
        return any(j["subject"] == "rbee-test/ctrl-c-GGUF:Q4_K_M" and (j["last"] or {}).get("unit") == "bytes"
                   for j in jobs)

    try:
        assert wait_for(downloading, 60), "the pull never showed download progress"
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert cli.returncode == 130 and "cancelled" in err

    def cancelled() -> bool:
        jobs = httpx.get(f"{fleet.url}/v1/jobs", timeout=10).json()
        return any(j["subject"] == "rbee-test/ctrl-c-GGUF:Q4_K_M" and j["state"] == "cancelled" for j in jobs)

    assert wait_for(cancelled, 60), "the queen's job was not cancelled"
    assert files_under(models_dir(h1) / "rbee-test/ctrl-c-GGUF") == []
    assert files_under(models_dir(h1) / ".partial") == []
    assert "rbee-test/ctrl-c-GGUF:Q4_K_M" not in catalog(fleet, "h1")


def test_a_cut_connection_resumes_on_the_hive(fleet: Queen, lan: Lan, hub: FakeHub, payload: bytes) -> None:
    hub.cut_after("rbee-test/cut-GGUF", "m-Q4_K_M.gguf", nbytes=3 * MIB // 2)  # past the hive's first 1 MiB chunk
    fleet.cli("model", "pull", "rbee-test/cut-GGUF:Q4_K_M", "-a", "h1", check=True, timeout=180)
    assert (models_dir(lan.host("h1")) / "rbee-test/cut-GGUF/m-Q4_K_M.gguf").read_bytes() == payload
    ranges = [r for method, path, r in hub.requests if method == "GET" and "cut-GGUF/resolve/" in path]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith(f"bytes={MIB}-")


def test_infer_pinned_to_a_hive_pulls_the_model_onto_it_first(fleet: Queen, lan: Lan) -> None:
    assert "rbee-test/fleet-GGUF:Q4_K_M" in catalog(fleet, "h1")  # on h1 only: h2 still needs it
    answer = fleet.cli("infer", "-a", "h2", "-m", "rbee-test/fleet-GGUF:Q4_K_M", "-p", "hi", "--max-tokens", "4",
                       timeout=240)
    assert answer.returncode == 0, answer.stderr
    assert "pull rbee-test/fleet-GGUF:Q4_K_M" in answer.stderr and answer.stdout.strip()
    assert (models_dir(lan.host("h2")) / "rbee-test/fleet-GGUF/m-Q4_K_M.gguf").exists()
    workers = [w for w in fleet.workers() if w["model"] == "rbee-test/fleet-GGUF:Q4_K_M"]
    assert [w["hive"] for w in workers] == ["h2"]
    for worker in workers:
        httpx.delete(f"{fleet.url}/v1/workers/{worker['id']}", timeout=30)


def test_the_hf_token_goes_with_the_job_and_is_kept_nowhere(fleet: Queen, lan: Lan) -> None:
    h1 = lan.host("h1")
    pulled = fleet.cli("model", "pull", "rbee-test/gated-GGUF:Q4_K_M", "-a", "h1", timeout=180)
    assert pulled.returncode == 0, pulled.stderr  # only the queen has the token: it travelled with the job
    assert "rbee-test/gated-GGUF:Q4_K_M" in catalog(fleet, "h1")
    jobs = httpx.get(f"{fleet.url}/v1/jobs", timeout=10).json()
    for job in jobs:
        with httpx.stream("GET", f"{fleet.url}/v1/jobs/{job['job_id']}/events", timeout=30) as resp:
            assert HF_SECRET not in resp.read().decode()
    audit = httpx.get(f"{fleet.url}/v1/audit", timeout=10)
    assert audit.status_code == 200 and "model.pull" in audit.text and HF_SECRET not in audit.text
    for folder in (h1.home, fleet.home):  # the hive's disk and log; the queen's log, database, audit log
        found = subprocess.run(["grep", "-rl", "--", HF_SECRET, str(folder)], capture_output=True, text=True)
        assert found.returncode == 1 and found.stdout == "", found.stdout


def test_info_and_rm_on_a_remote_hive(fleet: Queen, lan: Lan) -> None:
    h2 = lan.host("h2")
    fleet.cli("model", "pull", "rbee-test/info-GGUF:Q4_K_M", "-a", "h2", check=True, timeout=180)
    target = models_dir(h2) / "rbee-test/info-GGUF/m-Q4_K_M.gguf"
    info = json.loads(fleet.cli("model", "info", "rbee-test/info-GGUF:Q4_K_M", "-a", "h2", "--ctx", "256",
                                "--slots", "2", "--json", check=True).stdout)
    assert info["hive"] == "h2" and info["entry"]["path"] == str(target)
    assert info["entry"]["architecture"] == "llama" and info["memory"]["context_per_slot"] == 256
    assert info["memory"]["total"] > info["memory"]["weights"] > 0
    shown = fleet.cli("model", "info", "rbee-test/info-GGUF:Q4_K_M", "-a", "h2", check=True).stdout
    assert str(target) in shown
    removed = fleet.cli("model", "rm", "rbee-test/info-GGUF:Q4_K_M", "-a", "h2", check=True)
    assert "removed rbee-test/info-GGUF:Q4_K_M from h2 and deleted its files" in removed.stderr
    assert not target.exists()
    assert "rbee-test/info-GGUF:Q4_K_M" not in catalog(fleet, "h2")  # at once
    gone = fleet.cli("model", "info", "rbee-test/info-GGUF:Q4_K_M", "-a", "h2")
    assert gone.returncode == 1 and "does not exist on hive 'h2'" in gone.stderr.replace("\n", " ")


def test_model_ls_shows_every_hive_and_its_free_disk(fleet: Queen, lan: Lan) -> None:
    fleet.cli("model", "pull", "rbee-test/fleet-GGUF:Q4_K_M", "-a", "h1", check=True, timeout=180)
    disks = {d["hive"]: d for d in httpx.get(f"{fleet.url}/v1/storage", timeout=10).json()}
    assert set(disks) == {"h1", "h2"}
    for host in lan.hosts:
        models = [m for m in catalog(fleet, host.name).values() if not m["missing"]]
        assert disks[host.name]["models"] == len(models)
        assert disks[host.name]["models_bytes"] == sum(m["size_bytes"] for m in models)
        assert disks[host.name]["free_bytes"] > 0
    assert disks["h1"]["models_bytes"] >= 3 * MIB
    listed = fleet.cli("model", "ls", check=True).stdout
    assert "rbee-test/fleet-GGUF:Q4_K_M" in listed and "FREE FOR MODELS" in listed
    disk_table = listed[listed.index("FREE FOR MODELS"):]
    for host in lan.hosts:
        assert any(f" {host.name} " in line and "B " in line for line in disk_table.splitlines()), listed


def test_a_download_too_big_for_the_hives_disk_is_refused_up_front(fleet: Queen, lan: Lan, hub: FakeHub) -> None:
    result = fleet.cli("model", "pull", "rbee-test/huge-GGUF:Q4_K_M", "-a", "h2")
    assert result.returncode == 1
    message = result.stderr.replace("\n", " ")
    assert "not enough disk space" in message and "1000000.00 GB" in message and "hive 'h2'" in message
    assert str(models_dir(lan.host("h2"))) in message  # the hive's own folder and numbers, not the queen's
    assert not [r for r in hub.requests if "huge-GGUF/resolve" in r[1]]


def test_bad_input_is_refused_clearly(fleet: Queen, lan: Lan) -> None:
    unknown_hive = fleet.cli("model", "pull", "rbee-test/fleet-GGUF:Q4_K_M", "-a", "nope")
    assert unknown_hive.returncode == 1 and "There is no hive 'nope'" in unknown_hive.stderr
    assert "h1, h2" in unknown_hive.stderr
    unknown_model = fleet.cli("model", "info", "rbee-test/absent-GGUF:Q4_K_M", "-a", "h1")
    said = " ".join(unknown_model.stderr.split())
    assert unknown_model.returncode == 1 and "does not exist on hive 'h1'" in said
    assert "pull it first: rbee model pull rbee-test/absent-GGUF:Q4_K_M -a h1" in said  # onto that hive
    not_there = fleet.cli("model", "rm", "rbee-test/absent-GGUF:Q4_K_M", "-a", "h1")
    assert not_there.returncode == 1 and "rbee model ls" in not_there.stderr
    for text in (unknown_hive.stderr, unknown_model.stderr, not_there.stderr):
        assert "Traceback" not in text
    hive = f"http://{lan.host('h1').address}:7835"
    for method, path in (("POST", "/v1/hive/pulls"), ("GET", "/v1/hive/jobs/job-0123456789ab/events"),
                         ("DELETE", "/v1/hive/jobs/job-0123456789ab"), ("DELETE", "/v1/hive/models/x")):
        for headers in ({"Authorization": "Bearer wrong"}, {}):
            resp = httpx.request(method, hive + path, headers=headers, json={"model": "a/b"}, timeout=10)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_token"


def test_the_dashboard_pulls_onto_the_hive_chosen(fleet: Queen, lan: Lan, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    page = tab.page
    page.goto(f"{fleet.url}/#models")
    expect(page.locator("#pull-hive option")).to_have_text(["h1", "h2"])  # the ready hives; no local one here
    page.select_option("#pull-hive", "h2")
    page.fill("#pull-model", "rbee-test/dash-GGUF:Q4_K_M")
    page.click("#pull-form button[type=submit]")
    job = page.locator(".job").filter(has_text="rbee-test/dash-GGUF:Q4_K_M")
    expect(job.locator(".pill")).to_have_text("done", timeout=60_000)
    assert (models_dir(lan.host("h2")) / "rbee-test/dash-GGUF/m-Q4_K_M.gguf").exists()
    assert not (models_dir(lan.host("h1")) / "rbee-test/dash-GGUF").exists()
    row = page.locator('#catalog tr[data-model="rbee-test/dash-GGUF:Q4_K_M"]')
    expect(row).to_contain_text("h2")
    expect(page.locator("#disks")).to_contain_text(re.compile(r"h1: \d+ models?.* free.*h2: \d+ models?.* free"))
    assert tab.errors() == []
