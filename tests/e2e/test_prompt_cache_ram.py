"""A text worker's host-memory prompt cache (llama-server's `--cache-ram`), end to end with a real queen, its
embedded hive and llama-server: off unless RBEE_WORKER_CACHE_RAM_MIB asks for it (llama-server's own default
would let every worker fill 8 GiB of RAM that no memory estimate sees), and what it asks is counted in the
worker's memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import Queen
from tests.e2e.test_kv_restore import engine_process

MiB = 2**20


def served(queen: Queen, model: Path) -> tuple[list[str], int]:
    """A chat answered by a worker of `model`: that worker's command line and the memory the queen books for it."""
    resp = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, json={
        "model": str(model), "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2})
    assert resp.status_code == 200, resp.text
    argv = engine_process(queen).cmdline()
    [worker] = queen.workers()
    return argv, int(str(worker["memory_bytes"]))


def test_a_worker_keeps_no_prompt_cache_in_ram_unless_asked_and_counts_what_is_asked(
        make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    plain_argv, plain_memory = served(make_queen().start(), tiny_model)
    asked_argv, asked_memory = served(make_queen(RBEE_WORKER_CACHE_RAM_MIB="64").start(), tiny_model)
    assert plain_argv[plain_argv.index("--cache-ram") + 1] == "0"
    assert asked_argv[asked_argv.index("--cache-ram") + 1] == "64"
    assert asked_memory - plain_memory == 64 * MiB
