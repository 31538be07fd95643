"""The scheduler: how long it takes to decide where a model goes, on a simulated cluster, and what N
replicas of a model serve together against one.

    python benchmarks/scheduler.py            # 100 hives x 8 devices, 500 workers (target <= 1 ms median)
    python benchmarks/scheduler.py --e2e      # 1 and 2 real tiny-model workers (target >= 0.9 x N)

Decision (decide.load, placement included): three cases: a model that fits somewhere at once, one that
needs evictions, and one that must wait.
End to end: for N = 1 and 2, a queen starts N workers of the generated tiny model (one thread each); the
same streaming clients then run against the workers directly (split evenly) and through the queen. The
direct column says what this machine can give N workers; the queen's, what rbee gets of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbee.queen import decide
from rbee.queen.placement import DeviceView, WorkerView

GiB = 2**30


def cluster(hives: int, devices: int, workers: int, seed: int = 1) -> tuple[list[DeviceView], list[WorkerView]]:
    rng = random.Random(seed)
    devs = [DeviceView(f"hive{h}", f"gpu{d}", rng.choice([8, 12, 16, 24, 48, 80]) * GiB, rng.random() < 0.2)
            for h in range(hives) for d in range(devices)]
    ws = []
    for i in range(workers):
        d = rng.choice(devs)
        ws.append(WorkerView(f"w{i}", d.hive, d.device, int(rng.uniform(0.5, 6) * GiB), rng.choice([0, 0, 1, 3]),
                             rng.random() * 1000))
    return devs, ws


def measure(need: int, devs: list[DeviceView], ws: list[WorkerView], runs: int) -> list[float]:
    """The scheduler's load decision (rbee/queen/decide.py `load`, placement included), `runs` times."""
    room = decide.Room("bench", need, devs, ws)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        decide.load(room)
        times.append(time.perf_counter() - started)
    return times


async def _client(url: str, headers: dict[str, str], model: str, max_tokens: int, until: float) -> int:
    import httpx

    tokens = 0
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me about bees."}],
            "max_tokens": max_tokens, "stream": True}
    async with httpx.AsyncClient(timeout=120) as client:
        while time.perf_counter() < until:
            # llama-server closes a connection after a streamed answer, though it says keep-alive
            async with client.stream("POST", url, json=body, headers={**headers, "connection": "close"}) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if line.startswith("data:") and '"content"' in line:
                        tokens += 1
    return tokens


async def aggregate(targets: list[tuple[str, dict[str, str]]], model: str, clients: int, seconds: float,
                    max_tokens: int) -> float:
    """Tokens per second that `clients` streaming clients get, spread evenly over `targets`."""
    started = time.perf_counter()
    counts = await asyncio.gather(*(_client(*targets[i % len(targets)], model, max_tokens, started + seconds)
                                    for i in range(clients)))
    return sum(counts) / (time.perf_counter() - started)


def end_to_end(args: argparse.Namespace) -> None:
    import subprocess
    import tempfile

    import httpx
    import psutil

    from rbee.hive import engine
    from tests.fixtures.tiny_gguf import write_tiny_model

    found = engine.locate()
    if found is None:
        sys.exit("no llama-server: run `rbee engine install` first")
    rows = []
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        model = str(write_tiny_model(Path(tmp) / "tiny.gguf"))
        for n in (1, 2):
            home = Path(tmp) / f"queen{n}"
            port = 7890 + n
            env = {**os.environ, "RBEE_HOME": str(home), "RBEE_QUEEN_PORT": str(port),
                   "RBEE_LLAMA_SERVER": str(found[0]), "RBEE_WORKER_SLOTS": str(args.slots),
                   "RBEE_WORKER_THREADS": "1", "RBEE_WORKER_CONTEXT": "1024", "RBEE_MAX_REPLICAS": str(n),
                   "RBEE_KEEP_ALIVE": "-1", "RBEE_LOG_LEVEL": "WARNING"}
            queen = subprocess.Popen([sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--port",
                                      str(port)], env=env, start_new_session=True)
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(600):
                    try:
                        if httpx.get(f"{url}/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.05)
                for _ in range(n):
                    job = httpx.post(f"{url}/v1/jobs", json={"kind": "worker.spawn", "model": model}).json()
                    while httpx.get(f"{url}/v1/jobs/{job['job_id']}").json()["state"] not in ("done", "error"):
                        time.sleep(0.1)
                workers = [w for w in httpx.get(f"{url}/v1/workers").json() if w["state"] == "ready"]
                assert len(workers) == n, workers
                name = workers[0]["model"]
                direct = [(f"{w['url']}/v1/chat/completions",
                           {"authorization": f"Bearer {psutil.Process(w['pid']).environ()['LLAMA_API_KEY']}"})
                          for w in workers]
                via = [(f"{url}/v1/chat/completions", {})]
                rates = {}
                for label, targets in (("direct", direct), ("queen", via), ("direct2", direct), ("queen2", via)):
                    rate = asyncio.run(aggregate(targets, name, args.clients, args.seconds, args.max_tokens))
                    rates[label.rstrip("2")] = max(rates.get(label.rstrip("2"), 0.0), rate)  # best of two
                rows.append((n, rates["direct"], rates["queen"]))
            finally:
                queen.terminate()
                queen.wait(30)
    one_direct, one_queen = rows[0][1], rows[0][2]
    print(f"\nend to end: {args.clients} streaming clients, {args.max_tokens} tokens/request, {args.slots} slots "
          f"per worker, 1 thread each, best of 2 x {args.seconds:g} s, {os.cpu_count()} cores (clients, queen "
          "and workers share them)\n")
    print(f"{'workers':7} | {'direct tok/s':>12} | {'via queen tok/s':>15} | {'queen/direct':>12} | "
          f"{'direct vs N x one':>17} | {'queen vs N x one':>16}")
    print("-" * 8 + "|" + "-" * 14 + "|" + "-" * 17 + "|" + "-" * 14 + "|" + "-" * 19 + "|" + "-" * 17)
    for n, d, q in rows:
        print(f"{n:7} | {d:12.0f} | {q:15.0f} | {q / d:12.2f} | {d / (n * one_direct):16.2f}x | "
              f"{q / (n * one_queen):15.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hives", type=int, default=100)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--e2e", action="store_true", help="measure 1 and 2 real workers instead")
    parser.add_argument("--clients", type=int, default=16, help="--e2e: streaming clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="--e2e: seconds per measurement")
    parser.add_argument("--slots", type=int, default=4, help="--e2e: slots per worker")
    parser.add_argument("--max-tokens", type=int, default=64, help="--e2e: tokens per request")
    args = parser.parse_args()
    if args.e2e:
        end_to_end(args)
        return
    devs, ws = cluster(args.hives, args.devices, args.workers)
    full = [WorkerView(f"f{i}", d.hive, d.device, d.total, 1, 0.0) for i, d in enumerate(devs)]
    cases = [
        ("fits at once (4 GiB)", 4 * GiB, devs, ws),
        ("needs evictions (70 GiB)", 70 * GiB, devs, ws),
        ("must wait (every device busy)", 4 * GiB, devs, full),
    ]
    print(f"\nscheduler decision: {args.hives} hives x {args.devices} devices, {args.workers} workers, "
          f"{args.runs} runs each\n")
    print(f"{'case':32} | {'median':>9} | {'p99':>9}")
    print("-" * 33 + "|" + "-" * 11 + "|" + "-" * 10)
    for label, need, d, w in cases:
        times = sorted(measure(need, d, w, args.runs))
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        print(f"{label:32} | {statistics.median(times) * 1000:7.3f}ms | {p99 * 1000:7.3f}ms")


if __name__ == "__main__":
    main()
