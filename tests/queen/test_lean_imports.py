"""The daemon imports only what it needs: the CLI's libraries, the hub client, the GGUF writer (numpy) and
certificate making (cryptography) stay out of a running queen, aiohttp out of every daemon (the hops to
engines are rbee.common.upstream's) and prometheus_client too (rbee.common.prom writes /metrics); httpx
(clients to remote hives, copies between hives; not a starting worker's health poll, the engines' metrics
scrape, nor saving and restoring slots: rbee.common.upstream's) and tomlkit (writing models.toml) until first
used; psutil (the CPU device's RAM is read from /proc/meminfo), the route modules of the rarely used APIs
(route_table's lazy groups) and the contracts' pydantic schemas until first used, too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from rbee.queen import route_table
from tests.conftest import Queen

REPO = Path(__file__).resolve().parents[2]
KEPT_OUT = ("huggingface_hub", "cryptography", "rich", "typer", "pygments", "numpy", "gguf", "yaml", "rbee.keeper.cli",
             "httpx", "tomlkit", "aiohttp", "prometheus_client")


def _loaded_after(statement: str) -> list[str]:
    """Which of KEPT_OUT a fresh interpreter has in sys.modules after `statement`."""
    probe = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {KEPT_OUT!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_the_queens_server_module_imports_none_of_the_heavy_packages() -> None:
    assert _loaded_after("import rbee.queen.server") == []


def test_the_queens_server_leaves_the_lazy_route_groups_and_psutil_out() -> None:
    lazy = [group.module for group in route_table.LAZY]
    probe = ("import json, sys\nimport rbee.queen.server\n"
             f"print(json.dumps([m for m in {[*lazy, 'psutil']!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []
    assert "rbee.queen.ollama_routes" in lazy and "rbee.queen.openapi" in lazy  # the probe asked about them


def test_the_contracts_schemas_are_built_on_first_use_not_at_import() -> None:
    probe = ("from rbee.contracts.openai import ChatCompletionRequest as M\n"
             "print(M.__pydantic_complete__)\n"
             "M.model_validate({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]})\n"
             "print(M.__pydantic_complete__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.split() == ["False", "True"]


def test_the_daemons_entry_point_imports_none_of_them_either() -> None:
    assert _loaded_after("import rbee.keeper.main, rbee.keeper.queen_foreground") == []


def test_the_hives_server_has_no_aiohttp_either() -> None:  # its front forwards with rbee.common.upstream
    assert "aiohttp" not in _loaded_after("import rbee.hive.app")


def test_neither_daemon_imports_prometheus_client() -> None:
    assert "prometheus_client" not in _loaded_after("import rbee.hive.app, rbee.queen.server")


def test_the_cli_still_has_prometheus_client_for_rbee_watch() -> None:  # the probe above can fail: it sees it
    assert "prometheus_client" in _loaded_after("import rbee.keeper.watch")


def test_the_cli_still_has_them_where_it_needs_them() -> None:  # the probe above can fail: it sees these
    assert set(_loaded_after("import rbee.keeper.cli, rbee.common.tls_ca")) >= {"typer", "rich", "cryptography"}


def test_a_queen_that_served_a_model_maps_neither_numpy_nor_cryptography(
        make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = make_queen().start()
    assert queen.proc is not None
    assert "/psutil/" not in Path(f"/proc/{queen.proc.pid}/maps").read_text()  # idle: /proc/meminfo is enough
    body = {"model": str(tiny_model), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = httpx.post(f"{queen.url}/v1/chat/completions", json=body, timeout=120)  # added: its header was read
    assert answer.status_code == 200, answer.text
    assert queen.proc is not None
    maps = Path(f"/proc/{queen.proc.pid}/maps").read_text()
    assert "/cryptography/" not in maps and "/numpy" not in maps and "/aiohttp/" not in maps
    assert "/uvloop/" in maps  # the probe sees the queen's own libraries: it would see those too


def test_starting_a_worker_needs_no_httpx(tmp_path: Path, llama_server: Path, tiny_model: Path) -> None:
    probe = f"""
import asyncio, json, sys, time
from pathlib import Path
from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive.worker import WorkerProcess, WorkerSpec

async def main() -> str:
    entry = ModelEntry(name="tiny", path={str(tiny_model)!r}, size_bytes=1, added_at=time.time())
    spec = WorkerSpec(model=entry, mode=WorkerMode.GENERATE, engine=Path({str(llama_server)!r}), slots=1,
                      context_per_slot=256, threads=1)
    worker = WorkerProcess("t-w1", "localhost", spec, Path({str(tmp_path)!r}) / "t-w1.log")
    await worker.start()
    state = worker.state
    await worker.stop()
    return state.value

print(json.dumps([asyncio.run(main()), "httpx" in sys.modules]))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == ["ready", False]


def test_saving_restoring_a_slot_and_scraping_a_worker_need_no_httpx(tmp_path: Path, llama_server: Path,
                                                                    tiny_model: Path) -> None:
    probe = f"""
import asyncio, json, sys
from pathlib import Path
from rbee.common.metrics import engine_metrics
from rbee.common.upstream import Upstream
from rbee.contracts.slots import SlotSave
from rbee.contracts.workers import WorkerMode
from rbee.hive.service import Hive

async def main() -> list[object]:
    hive = Hive("probe", state=Path({str(tmp_path)!r}) / "state")
    entry = await hive.catalog.add_file(Path({str(tiny_model)!r}), "tiny")
    first = await hive.spawn_worker(entry, WorkerMode.GENERATE)
    client = Upstream(connect_s=5)
    body = json.dumps({{"prompt": "the river and the brown fox " * 20, "max_tokens": 2, "id_slot": 0}}).encode()
    answer = await client.request("POST", f"{{first.url}}/v1/completions", body,
                                  {{"Authorization": f"Bearer {{first.api_key}}", "Content-Type": "application/json"}})
    await answer.read()
    answer.close()
    await client.close()
    scraped = await engine_metrics([first])
    stopped = await hive.save_and_stop(first.id, [SlotSave(slot=0, key="ab12cd34ef56")])
    second = await hive.spawn_worker(entry, WorkerMode.GENERATE)
    restored = await hive.restore_slot(second.id, 0, "ab12cd34ef56")
    await hive.close()
    return [answer.status, "llamacpp:prompt_tokens_total" in scraped, len(stopped.saved), restored.restored]

print(json.dumps([*asyncio.run(main()), "httpx" in sys.modules]))
"""
    env = {**os.environ, "RBEE_HOME": str(tmp_path / "home"), "RBEE_LLAMA_SERVER": str(llama_server),
           "RBEE_WORKER_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [200, True, 1, True, False]
