"""The queen chooses where a download goes: `rbee model pull NAME` and `rbee infer -m NAME` without -a, on a fleet;
`-a h1,h2` and `--all` pull onto several hives.

Two hosts in network namespaces (tests/fixtures/lan.py) get hives by `rbee hive install`; the queen runs no local
hive. h1's models folder is a 2 MiB tmpfs (its ModelsDir in hives.conf): the tiny model (~0.4 MiB) fits there, the
one padded to 3 MiB does not, so the choice is forced. The fake hub listens on the LAN bridge.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen
from tests.fixtures.fake_hub import FakeHub, HubFile
from tests.fixtures.fleet import installed_fleet, padded
from tests.fixtures.lan import Lan, lan_hosts
from tests.fixtures.tiny_gguf import write_tiny_model

MIB = 2**20


@pytest.fixture(scope="module")
def small_disk() -> Iterator[Path]:
    """A 2 MiB tmpfs, to be h1's models folder. Mounted before the hosts' sshd start: each runs in a mount
    namespace copied when it starts, so a later mount would not show there."""
    folder = Path(tempfile.mkdtemp(prefix="rbee-small-disk-", dir="/var/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=1777", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def lan(small_disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(2, tmp_path_factory.mktemp("lan")) as lan:
        yield lan


@pytest.fixture(scope="module")
def hub(lan: Lan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    small = write_tiny_model(tmp_path_factory.mktemp("placemodel") / "m.gguf").read_bytes()
    big = padded(small, 3 * MIB)
    with FakeHub().start(lan.gateway) as hub:
        for repo in ("big-GGUF", "all-GGUF", "infer-GGUF", "both-GGUF"):
            hub.add_repo(f"rbee-test/{repo}", {"m-Q4_K_M.gguf": big})
        hub.add_repo("rbee-test/small-GGUF", {"m-Q4_K_M.gguf": small})
        hub.add_repo("rbee-test/huge-GGUF", [HubFile("m-Q4_K_M.gguf", big, advertised_size=10**15)])
        yield hub


@pytest.fixture(scope="module")
def fleet(lan: Lan, hub: FakeHub, small_disk: Path, tmp_path_factory: pytest.TempPathFactory,
          llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    with installed_fleet(lan, home, llama_server, hub.env(home),
                         hosts_extra={"h1": {"ModelsDir": str(small_disk)}}) as queen:
        yield queen


def models_dir(lan: Lan, host: str, small_disk: Path) -> Path:
    return small_disk if host == "h1" else lan.host(host).home / ".local" / "share" / "rbee" / "models"


def holds(fleet: Queen, hive: str, name: str) -> bool:
    entries = httpx.get(f"{fleet.url}/v1/catalog", params={"hive": hive}, timeout=10).json()
    return any(m["name"] == name and not m["missing"] for m in entries)


def said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join(result.stderr.split())


def test_a_pull_without_a_hive_goes_where_the_disk_holds_it_and_says_why(fleet: Queen, lan: Lan,
                                                                         small_disk: Path) -> None:
    result = fleet.cli("model", "pull", "rbee-test/big-GGUF:Q4_K_M", timeout=180)
    assert result.returncode == 0, result.stderr
    text = said(result)
    assert "placing on h2: its cpu has" in text and "a worker of the 3 MiB model needs" in text
    assert "h1 has 2 MiB free for models, the files need 3 MiB" in text
    assert text.index("placing on h2") < text.index("rbee-test/big-GGUF:Q4_K_M is on h2")
    assert holds(fleet, "h2", "rbee-test/big-GGUF:Q4_K_M") and not holds(fleet, "h1", "rbee-test/big-GGUF:Q4_K_M")
    assert (models_dir(lan, "h2", small_disk) / "rbee-test/big-GGUF/m-Q4_K_M.gguf").stat().st_size == 3 * MIB
    jobs = httpx.get(f"{fleet.url}/v1/jobs", timeout=10).json()
    done = [j["last"] for j in jobs if j["subject"] == "rbee-test/big-GGUF:Q4_K_M" and j["state"] == "done"]
    assert done and done[-1]["data"]["hive"] == "h2" and done[-1]["data"]["placement"].startswith("placing on h2")


def test_a_pull_onto_two_hives_puts_it_on_both(fleet: Queen, lan: Lan, small_disk: Path) -> None:
    result = fleet.cli("model", "pull", "rbee-test/small-GGUF:Q4_K_M", "-a", "h1,h2", timeout=180)
    assert result.returncode == 0, result.stderr
    text = said(result)
    assert "pull rbee-test/small-GGUF:Q4_K_M onto h1" in text and "pull rbee-test/small-GGUF:Q4_K_M onto h2" in text
    assert "h1: rbee-test/small-GGUF:Q4_K_M" in text and "h2: rbee-test/small-GGUF:Q4_K_M" in text
    for hive in ("h1", "h2"):
        assert holds(fleet, hive, "rbee-test/small-GGUF:Q4_K_M")
        assert (models_dir(lan, hive, small_disk) / "rbee-test/small-GGUF/m-Q4_K_M.gguf").exists()


def test_all_hives_one_failing_leaves_the_other_and_exits_non_zero(fleet: Queen, lan: Lan, small_disk: Path) -> None:
    result = fleet.cli("model", "pull", "rbee-test/all-GGUF:Q4_K_M", "--all", timeout=180)
    assert result.returncode == 1
    text = said(result)
    assert "h1: failed:" in text and "not enough disk space" in text
    assert "h2: rbee-test/all-GGUF:Q4_K_M" in text
    assert "the pull failed on 1 of 2 hives (h1); the others keep the model" in text
    assert holds(fleet, "h2", "rbee-test/all-GGUF:Q4_K_M") and not holds(fleet, "h1", "rbee-test/all-GGUF:Q4_K_M")
    assert not (small_disk / "rbee-test/all-GGUF").exists()


def test_bad_targets_are_refused_before_anything_starts(fleet: Queen, hub: FakeHub) -> None:
    unknown = fleet.cli("model", "pull", "rbee-test/both-GGUF:Q4_K_M", "-a", "h1,nope")
    assert unknown.returncode == 1
    assert "There is no hive 'nope'. Known hives: h1, h2; nothing was pulled" in said(unknown)
    both = fleet.cli("model", "pull", "rbee-test/both-GGUF:Q4_K_M", "-a", "h1", "--all")
    assert both.returncode == 1 and "not both" in said(both)
    assert not [r for r in hub.requests if "both-GGUF" in r[1]]
    nowhere = fleet.cli("model", "pull", "rbee-test/huge-GGUF:Q4_K_M")
    assert nowhere.returncode == 1
    text = said(nowhere)
    assert "no hive can take the model" in text
    assert "h1 has" in text and "h2 has" in text and text.count("free for models, the files need 909.5 TiB") == 2
    assert not [r for r in hub.requests if "huge-GGUF/resolve" in r[1]]
    for result in (unknown, both, nowhere):
        assert "Traceback" not in result.stderr


def test_infer_without_a_hive_pulls_where_it_would_run_best_and_runs_there(fleet: Queen) -> None:
    answer = fleet.cli("infer", "-m", "rbee-test/infer-GGUF:Q4_K_M", "-p", "hi", "--max-tokens", "4", timeout=240)
    assert answer.returncode == 0, answer.stderr
    assert "placing on h2" in said(answer) and answer.stdout.strip()
    assert holds(fleet, "h2", "rbee-test/infer-GGUF:Q4_K_M") and not holds(fleet, "h1", "rbee-test/infer-GGUF:Q4_K_M")
    workers = [w for w in fleet.workers() if w["model"] == "rbee-test/infer-GGUF:Q4_K_M"]
    assert [w["hive"] for w in workers] == ["h2"]
    for worker in workers:
        httpx.delete(f"{fleet.url}/v1/workers/{worker['id']}", timeout=30)
