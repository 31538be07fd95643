"""Models from a hub: pulls through a real queen against a local server that speaks the hub's protocol."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen, free_port, queen_env, wait_for
from tests.fixtures.fake_hub import FakeHub, HubFile
from tests.fixtures.tiny_gguf import write_tiny_model

TOKEN = "hf_test_token"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("hubmodels")
    first = write_tiny_model(folder / "split.gguf", split_max_tensors=8)
    parts = sorted(first.parent.glob("split-*-of-*.gguf"))
    found = {p.name: p.read_bytes() for p in parts}
    found["q4"] = write_tiny_model(folder / "a.gguf").read_bytes()
    found["q8"] = write_tiny_model(folder / "b.gguf", seed=1, dtype="f32").read_bytes()
    return found


@pytest.fixture(scope="module")
def hub(models: dict[str, bytes]) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.add_repo("rbee-test/tiny-GGUF", {"tiny-Q4_K_M.gguf": models["q4"], "tiny-Q8_0.gguf": models["q8"],
                                              "README.md": b"# tiny"})
        hub.add_repo("rbee-test/noq4-GGUF", {"m-Q5_K_M.gguf": models["q4"], "m-IQ2_XS.gguf": models["q4"]})
        parts = {f"big/big-Q4_K_M-{name.split('-', 1)[1]}": data for name, data in models.items()
                 if name.startswith("split-")}
        hub.add_repo("rbee-test/split-GGUF", parts)
        hub.add_repo("rbee-test/bad-sha-GGUF", [HubFile("m-Q4_K_M.gguf", models["q4"], advertised_sha256="0" * 64)])
        hub.add_repo("rbee-test/huge-GGUF", [HubFile("m-Q4_K_M.gguf", models["q4"], advertised_size=10**15)])
        hub.add_repo("rbee-test/cut-GGUF", {"m-Q4_K_M.gguf": models["q8"]})
        hub.add_repo("rbee-test/slow-GGUF", {"m-Q4_K_M.gguf": models["q8"]})
        hub.add_repo("rbee-test/gated-GGUF", {"m-Q4_K_M.gguf": models["q4"]}, gated_token=TOKEN)
        yield hub


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, llama_server: Path, hub: FakeHub) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("modelqueen")
    port = free_port()
    q = Queen(home, port, {**queen_env(home, port, llama_server), **hub.env(home)}).start()
    yield q
    assert not q.stop(), "workers outlived their queen"


def models_dir(queen: Queen) -> Path:
    return queen.home / "data" / "models"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def catalog(queen: Queen) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in httpx.get(f"{queen.url}/v1/catalog", timeout=10).json()}


def test_pull_by_repo_and_quant_then_infer_and_inspect(queen: Queen, models: dict[str, bytes]) -> None:
    pulled = queen.cli("model", "pull", "rbee-test/tiny-GGUF:Q8_0", check=True)
    assert "rbee-test/tiny-GGUF:Q8_0 is on localhost" in pulled.stderr
    target = models_dir(queen) / "rbee-test/tiny-GGUF/tiny-Q8_0.gguf"
    assert target.read_bytes() == models["q8"]
    entry = catalog(queen)["rbee-test/tiny-GGUF:Q8_0"]
    assert entry["source"] == "hf" and entry["repo"] == "rbee-test/tiny-GGUF" and len(str(entry["revision"])) == 40
    assert entry["sha256"] == {"tiny-Q8_0.gguf": __import__("hashlib").sha256(models["q8"]).hexdigest()}

    listed = queen.cli("model", "ls", check=True).stdout
    assert "rbee-test/tiny-GGUF:Q8_0" in listed and "F32" in listed
    info = json.loads(queen.cli("model", "info", "rbee-test/tiny-GGUF:Q8_0", "--ctx", "1024", "--slots", "2",
                                "--json", check=True).stdout)
    assert info["entry"]["architecture"] == "llama" and info["entry"]["context_length"] == 2048
    assert info["entry"]["parameter_count"] > 100_000
    memory = info["memory"]
    assert memory["slots"] == 2 and memory["context_per_slot"] == 1024
    # 2 layers x 2048 tokens x 2 KV heads x (16 + 16) dims x 2 bytes
    assert memory["kv_cache"] == 2 * 2048 * 2 * 32 * 2
    assert memory["total"] == memory["weights"] + memory["kv_cache"] + memory["compute"] + memory["overhead"]
    assert "memory for 2 x 1024 tokens" in queen.cli("model", "info", "rbee-test/tiny-GGUF:Q8_0", "--slots", "2",
                                                      "--ctx", "1024", check=True).stdout

    again = queen.cli("model", "pull", "rbee-test/tiny-GGUF:Q8_0", check=True)
    assert "already on localhost" in again.stderr
    answer = queen.cli("infer", "-m", "rbee-test/tiny-GGUF:Q8_0", "-p", "hi", "--max-tokens", "4", check=True)
    assert answer.stdout.strip()


def test_infer_pulls_the_default_quant_first(queen: Queen) -> None:
    result = queen.cli("infer", "-m", "rbee-test/tiny-GGUF", "-p", "hi", "--max-tokens", "4", check=True)
    assert "pull rbee-test/tiny-GGUF" in result.stderr and result.stdout.strip()
    assert "rbee-test/tiny-GGUF:Q4_K_M" in catalog(queen)
    # the short name keeps working once pulled, through the OpenAI API too
    reply = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60, json={
        "model": "rbee-test/tiny-GGUF", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 200


def test_a_repo_without_the_default_quant_lists_the_choices(queen: Queen) -> None:
    result = queen.cli("model", "pull", "rbee-test/noq4-GGUF")
    assert result.returncode == 1
    assert "no Q4_K_M" in result.stderr and "IQ2_XS, Q5_K_M" in result.stderr
    assert "Traceback" not in result.stderr


def test_split_model_is_fetched_whole_and_loaded_by_its_first_part(queen: Queen) -> None:
    queen.cli("model", "pull", "rbee-test/split-GGUF:Q4_K_M", check=True)
    folder = models_dir(queen) / "rbee-test/split-GGUF/big"
    assert files_under(folder) == [f"big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    entry = catalog(queen)["rbee-test/split-GGUF:Q4_K_M"]
    assert str(entry["path"]).endswith("-00001-of-00003.gguf") and len(entry["files"]) == 3  # type: ignore[arg-type]
    answer = queen.cli("infer", "-m", "rbee-test/split-GGUF:Q4_K_M", "-p", "hi", "--max-tokens", "4", check=True)
    assert answer.stdout.strip()


def test_a_cut_connection_resumes_with_a_range_request(queen: Queen, hub: FakeHub, models: dict[str, bytes]) -> None:
    hub.cut_after("rbee-test/cut-GGUF", "m-Q4_K_M.gguf", nbytes=300_000)
    queen.cli("model", "pull", "rbee-test/cut-GGUF:Q4_K_M", check=True, timeout=180)
    assert (models_dir(queen) / "rbee-test/cut-GGUF/m-Q4_K_M.gguf").read_bytes() == models["q8"]
    ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith("cut-GGUF/resolve/" +
              str(catalog(queen)["rbee-test/cut-GGUF:Q4_K_M"]["revision"]) + "/m-Q4_K_M.gguf")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")


def test_a_wrong_sha256_is_rejected_and_cleaned_up(queen: Queen) -> None:
    result = queen.cli("model", "pull", "rbee-test/bad-sha-GGUF:Q4_K_M")
    assert result.returncode == 1 and "does not match the hub's" in result.stderr
    assert files_under(models_dir(queen) / "rbee-test/bad-sha-GGUF") == []
    assert files_under(models_dir(queen) / ".partial") == []
    assert "rbee-test/bad-sha-GGUF:Q4_K_M" not in catalog(queen)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rbee-test/nope-GGUF:Q4_K_M", "there is no model repo rbee-test/nope-GGUF"),
        ("rbee-test/tiny-GGUF/absent-Q4_K_M.gguf", "has no file absent-Q4_K_M.gguf"),
        ("rbee-test/tiny-GGUF@v9:Q4_K_M", "has no revision 'v9'"),
        ("not a model/at all!", "neither a file path nor a Hugging Face name"),
    ],
)
def test_things_that_do_not_exist_are_clear_errors(queen: Queen, name: str, expected: str) -> None:
    result = queen.cli("model", "pull", name)
    assert result.returncode == 1
    assert expected in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr


def test_not_enough_disk_is_refused_before_downloading(queen: Queen, hub: FakeHub) -> None:
    result = queen.cli("model", "pull", "rbee-test/huge-GGUF:Q4_K_M")
    assert result.returncode == 1
    message = result.stderr.replace("\n", " ")
    assert "not enough disk space" in message and "1000000.00 GB" in message and str(models_dir(queen)) in message
    assert not [r for r in hub.requests if "huge-GGUF/resolve" in r[1]]


def test_cancel_mid_download_leaves_nothing_behind(queen: Queen, hub: FakeHub) -> None:
    hub.slow("rbee-test/slow-GGUF", "m-Q4_K_M.gguf", bytes_per_second=200_000)
    job_id = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "model.pull", "model": "rbee-test/slow-GGUF:Q4_K_M"},
                        timeout=10).json()["job_id"]
    events = []
    with httpx.stream("GET", f"{queen.url}/v1/jobs/{job_id}/events", timeout=60) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            events.append(event)
            if event.get("unit") == "bytes" and 0 < event["current"] < event["total"]:
                assert httpx.delete(f"{queen.url}/v1/jobs/{job_id}", timeout=10).json()["cancelled"]
    assert events[-1]["type"] == "cancelled"
    assert any(e.get("data", {}) and e["data"].get("speed") for e in events if e.get("unit") == "bytes")
    assert wait_for(lambda: files_under(models_dir(queen) / "rbee-test/slow-GGUF") == [], 10)
    assert wait_for(lambda: files_under(models_dir(queen) / ".partial") == [], 10)
    assert "rbee-test/slow-GGUF:Q4_K_M" not in catalog(queen)


def test_aliases_builtin_and_user_defined(queen: Queen) -> None:
    config = queen.home / "config"
    config.mkdir(exist_ok=True)
    (config / "models.toml").write_text('[aliases]\ntiny-alias = "rbee-test/tiny-GGUF:Q8_0"\n')

    def unknown() -> subprocess.CompletedProcess[str]:
        return queen.cli("model", "pull", "no-such-alias")

    # an edit by hand reaches the queen within about a second: the aliases it lists in a refusal show it has it
    assert wait_for(lambda: "tiny-alias" in unknown().stderr, 10)
    queen.cli("model", "pull", "tiny-alias", check=True)
    entry = catalog(queen)["tiny-alias"]
    assert entry["repo"] == "rbee-test/tiny-GGUF"
    refused = unknown()
    assert refused.returncode == 1 and "llama-3-8b" in refused.stderr and "qwen2.5-coder-7b" in refused.stderr


def test_rm_deletes_downloads_and_missing_files_are_reported(queen: Queen) -> None:
    queen.cli("model", "pull", "rbee-test/tiny-GGUF:Q4_K_M", check=True)
    for worker in queen.workers():
        httpx.delete(f"{queen.url}/v1/workers/{worker['id']}", timeout=30)
    removed = queen.cli("model", "rm", "rbee-test/tiny-GGUF:Q4_K_M", check=True)
    assert "deleted its files" in removed.stderr
    assert not (models_dir(queen) / "rbee-test/tiny-GGUF/tiny-Q4_K_M.gguf").exists()
    assert (models_dir(queen) / "rbee-test/tiny-GGUF/tiny-Q8_0.gguf").exists()

    (models_dir(queen) / "rbee-test/tiny-GGUF/tiny-Q8_0.gguf").unlink()
    listed = queen.cli("model", "ls", check=True)
    assert "missing" in listed.stdout and "is gone" in listed.stderr
    refused = httpx.post(f"{queen.url}/v1/chat/completions", timeout=30, json={
        "model": "rbee-test/tiny-GGUF:Q8_0", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 404 and "is gone" in refused.json()["error"]["message"]
    assert queen.cli("model", "rm", "nope").returncode == 1


def test_catalog_survives_a_queen_restart_without_network(queen: Queen, hub: FakeHub) -> None:
    before = catalog(queen)
    assert not queen.stop()
    queen.env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
    queen.start()
    assert catalog(queen).keys() == before.keys()
    assert queen.cli("model", "ls", check=True).returncode == 0


def test_gated_repo_needs_a_token(make_queen: Callable[..., Queen], hub: FakeHub) -> None:
    queen = make_queen()
    queen.env.update(hub.env(queen.home))
    queen.start()
    refused = queen.cli("model", "pull", "rbee-test/gated-GGUF:Q4_K_M")
    assert refused.returncode == 1 and "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    queen.stop()
    queen.env["HF_TOKEN"] = TOKEN
    queen.start()
    queen.cli("model", "pull", "rbee-test/gated-GGUF:Q4_K_M", check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB file system of its own (tmpfs), so a download can fill it up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_up_during_a_download_fails_clearly_and_keeps_nothing(
    make_queen: Callable[..., Queen], hub: FakeHub, small_disk: Path, models: dict[str, bytes]
) -> None:
    model = models["q8"]
    payload = model + b"\0" * (2 * 2**20 - len(model))  # fits the empty disk: the check before downloading passes
    hub.add_repo("rbee-test/filler-GGUF", {"m-Q4_K_M.gguf": payload})
    hub.slow("rbee-test/filler-GGUF", "m-Q4_K_M.gguf", bytes_per_second=400_000)
    queen = make_queen(RBEE_MODELS_DIR=str(small_disk))
    queen.env.update(hub.env(queen.home))
    queen.start()
    job_id = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "model.pull", "model": "rbee-test/filler-GGUF"},
                        timeout=10).json()["job_id"]
    events = []
    with httpx.stream("GET", f"{queen.url}/v1/jobs/{job_id}/events", timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("unit") == "bytes" and not (small_disk / "filler").exists():
                    with (small_disk / "filler").open("wb") as f:  # something else takes the space meanwhile
                        with contextlib.suppress(OSError):
                            while True:
                                f.write(b"\0" * 65536)
                                f.flush()
    failed = events[-1]
    assert failed["type"] == "error", failed
    assert "filled up" in failed["message"] and str(small_disk) in failed["message"]
    (small_disk / "filler").unlink()
    assert files_under(small_disk) == []  # the partial download is gone
    assert "rbee-test/filler-GGUF:Q4_K_M" not in catalog(queen)
    hub.slow("rbee-test/filler-GGUF", "m-Q4_K_M.gguf", bytes_per_second=10**9)
    again = queen.cli("model", "pull", "rbee-test/filler-GGUF")
    assert again.returncode == 0, again.stderr
    assert (small_disk / "rbee-test/filler-GGUF/m-Q4_K_M.gguf").read_bytes() == payload


def test_a_file_that_is_not_gguf_is_not_kept(make_queen: Callable[..., Queen], hub: FakeHub) -> None:
    queen = make_queen()
    queen.env.update(hub.env(queen.home))
    queen.start()
    hub.add_repo("rbee-test/fake-GGUF", {"m-Q4_K_M.gguf": b"this is not a model" * 1000})
    result = queen.cli("model", "pull", "rbee-test/fake-GGUF")
    assert result.returncode == 1 and "not a GGUF model file" in result.stderr and "deleted" in result.stderr
    assert files_under(models_dir(queen) / "rbee-test/fake-GGUF") == []
