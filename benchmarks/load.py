"""A bounded load test: many concurrent streaming clients against a real queen with a tiny-model worker.

Starts a queen in a temporary RBEE_HOME, warms one worker up with the generated tiny model, then runs
--clients clients for --duration seconds; each sends streaming chat completions
(`"stream": true, "stream_options": {"include_usage": true}`) one after another and reads every SSE line.
Requests still streaming when the time is up are read to their end (bounded by --timeout).

    python benchmarks/load.py                              # 256 clients for 60 s, 8 slots, 1 replica
    python benchmarks/load.py --clients 16 --duration 5    # a quick check
    python benchmarks/load.py --replicas 2 --slots 16      # more serving capacity

How each request is classified:

    ok                      HTTP 200, a chunk with a finish_reason, a usage chunk and `data: [DONE]`
    http <status> <code>    an answer other than 200 (the code is the OpenAI envelope's error.code)
    stream error <code>     an error event inside a 200 stream (the queen's way to end a stream it cannot finish)
    transport <Exception>   the connection failed (refused, reset, timed out), named by the exception class
    truncated               a 200 stream that ended without `data: [DONE]` and without an error event
    no finish_reason        `[DONE]` came but no chunk carried a finish_reason
    no usage                `[DONE]` came but no usage chunk, although include_usage was asked for

Lost streams are the 200 streams that never reached `[DONE]` without saying why: "truncated" ones and
those cut by a transport error after the headers. They are counted separately; the target is 0.

The queue bounds (RBEE_QUEUE_PER_MODEL, RBEE_QUEUE_MAX) are raised to at least --clients, so a correct
queen has room for every client and refuses none. `http 503 queue_full` answers are explicit, designed
refusals (with Retry-After, which the client honours): they are reported among the errors but do not fail
the run, so --queue below --clients exercises back-pressure. Everything else that is not ok fails:

    exit 1   any lost stream, any other non-200 answer (5xx included), stream error event, transport error,
             [DONE] without finish_reason or usage, a lease still in flight after the load, or a queen that died
    exit 0   otherwise

Latency percentiles are over the ok requests: TTFT up to the first chunk with content, total up to the end of
the stream, both from the moment the request is sent (so they include any wait in the queen's queue).

Queen memory (RSS of the queen process alone) is sampled before the load, every second during it, and
--settle seconds after it (it should come back to about where it was); the workers (the queen's child
processes) are reported separately, as are the queen's open file descriptors (a leaked connection shows there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rbee.hive import engine  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

CHAT = [{"role": "user", "content": "Write a long story about a bee."}]
OK = "ok"
REFUSAL = "http 503 queue_full"  # the designed back-pressure answer: reported, not a failure
MiB = 2**20


@dataclass
class Outcome:
    kind: str
    total_s: float
    ttft_s: float | None = None
    tokens: int = 0
    lost: bool = False  # a 200 stream that ended without [DONE] and without an error event
    retry_after_s: float | None = None


@dataclass
class Memory:
    queen_rss: int
    workers_rss: int
    queen_fds: int


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    before: Memory | None = None
    during: list[Memory] = field(default_factory=list)
    after: list[Memory] = field(default_factory=list)  # --settle seconds after each round
    in_flight_after: int = -1
    workers_after: int = -1
    queen_died: bool = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def memory(queen: psutil.Process) -> Memory:
    workers = 0
    for child in queen.children(recursive=True):
        try:
            workers += child.memory_info().rss
        except psutil.Error:
            pass  # a worker that went away between the listing and the reading
    return Memory(queen.memory_info().rss, workers, queen.num_fds())


async def refused(resp: aiohttp.ClientResponse, started: float) -> Outcome:
    """An answer other than 200: its status and the envelope's error.code."""
    code = ""
    try:
        error = json.loads(await resp.read()).get("error") or {}
        code = str(error.get("code") or error.get("type") or "")
    except (ValueError, AttributeError, aiohttp.ClientError):
        pass
    retry = resp.headers.get("retry-after", "")
    return Outcome(f"http {resp.status} {code}".rstrip(), time.perf_counter() - started,
                   retry_after_s=float(retry) if retry.replace(".", "", 1).isdigit() else None)


async def one_request(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> Outcome:
    started = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    done = finished = usage = began = False
    error_code: str | None = None
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                return await refused(resp, started)
            began = True
            async for raw in resp.content:  # one SSE line at a time
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                try:
                    data = json.loads(payload)
                except ValueError:
                    error_code = error_code or "unparsable event"
                    continue
                if not isinstance(data, dict):
                    continue
                if "error" in data:
                    error = data["error"] if isinstance(data["error"], dict) else {}
                    error_code = error_code or str(error.get("code") or error.get("type") or "unknown")
                    continue
                for choice in data.get("choices") or []:
                    if ttft is None and (choice.get("delta") or {}).get("content"):
                        ttft = time.perf_counter() - started
                    finished = finished or bool(choice.get("finish_reason"))
                if data.get("usage"):
                    usage = True
                    tokens = int(data["usage"].get("completion_tokens") or 0)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Outcome(f"transport {type(exc).__name__}", time.perf_counter() - started, ttft, tokens, lost=began)
    total = time.perf_counter() - started
    if error_code is not None:
        return Outcome(f"stream error {error_code}", total, ttft, tokens)
    if not done:
        return Outcome("truncated", total, ttft, tokens, lost=True)
    if not finished:
        return Outcome("no finish_reason", total, ttft, tokens)
    if not usage:
        return Outcome("no usage", total, ttft, tokens)
    return Outcome(OK, total, ttft, tokens)


async def client(session: aiohttp.ClientSession, url: str, body: dict[str, object], deadline: float,
                 outcomes: list[Outcome]) -> None:
    while (left := deadline - time.perf_counter()) > 0:
        outcome = await one_request(session, url, body)
        outcomes.append(outcome)
        if outcome.kind != OK:  # back off (as Retry-After asks, else half a second) instead of spinning
            await asyncio.sleep(min(outcome.retry_after_s or 0.5, 5.0, max(0.0, left)))


async def sample(queen: psutil.Process, stop: asyncio.Event, samples: list[Memory]) -> None:
    while not stop.is_set():
        try:
            samples.append(memory(queen))
        except psutil.Error:
            return  # the queen is gone; the run notices
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def workers(session: aiohttp.ClientSession, queen: str) -> tuple[int, int]:
    """(requests the queen still counts in flight, ready workers)."""
    async with session.get(f"{queen}/v1/workers") as resp:
        resp.raise_for_status()
        listed = await resp.json()
    return sum(int(w.get("in_flight") or 0) for w in listed), sum(w.get("state") == "ready" for w in listed)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def load(queen: str, model: str, queen_proc: psutil.Process, args: argparse.Namespace) -> Run:
    run = Run()
    timeout = aiohttp.ClientTimeout(total=args.timeout, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=args.clients + 8, limit_per_host=args.clients + 8)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = f"{queen}/v1/chat/completions"
        warm = {"model": model, "messages": CHAT, "max_tokens": 2, "temperature": 0}
        async with session.post(url, json=warm, timeout=aiohttp.ClientTimeout(total=300)) as resp:
            if resp.status != 200:
                sys.exit(f"warm-up request failed: HTTP {resp.status}: {(await resp.text())[:500]}")
            name = (await resp.json())["model"]
        await asyncio.sleep(1.0)  # let the warm-up's bookkeeping settle before the baseline
        run.before = memory(queen_proc)

        body: dict[str, object] = {"model": name, "messages": CHAT, "max_tokens": args.max_tokens, "temperature": 0,
                                   "stream": True, "stream_options": {"include_usage": True}}
        for _ in range(args.rounds):
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample(queen_proc, stop, run.during))
            started = time.perf_counter()
            deadline = started + args.duration
            await asyncio.gather(*(client(session, url, body, deadline, run.outcomes) for _ in range(args.clients)))
            run.wall_s += time.perf_counter() - started
            stop.set()
            await sampler

            await asyncio.sleep(args.settle)
            if not alive(queen_proc):
                run.queen_died = True
                return run
            run.after.append(memory(queen_proc))
            run.in_flight_after, run.workers_after = await workers(session, queen)
            if run.in_flight_after:
                break  # a leak: the next round would only pile onto it
    return run


def ms(values: list[float], q: float) -> str:
    return f"{pct(values, q) * 1000:.1f}" if values else "-"


def mib(value: int | None) -> str:
    return f"{value / MiB:.1f}" if value is not None else "-"


def report(run: Run, args: argparse.Namespace, queue: tuple[int, int]) -> tuple[list[tuple[str, str]], list[str]]:
    """The table's rows, and why the run failed (empty when it passed)."""
    kinds = Counter(o.kind for o in run.outcomes)
    ok = [o for o in run.outcomes if o.kind == OK]
    lost = sum(o.lost for o in run.outcomes)
    tokens = sum(o.tokens for o in run.outcomes)
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    total = [o.total_s for o in ok]
    wall = run.wall_s or 1.0
    rows = [
        ("clients", str(args.clients)),
        ("duration (s)", f"{args.duration:g}" + (f" x {args.rounds} rounds" if args.rounds > 1 else "")
         + f" (streams ended after {run.wall_s:.1f})"),
        ("worker slots x replicas", f"{args.slots} x {args.replicas}"),
        ("queue bound (per model / all)", f"{queue[0]} / {queue[1]}"),
        ("requests completed", f"{len(run.outcomes)} ({len(ok)} ok)"),
        ("requests/s (ok)", f"{len(ok) / wall:.1f}"),
        ("tokens/s (aggregate)", f"{tokens / wall:.0f}"),
    ]
    errors = sorted((k, n) for k, n in kinds.items() if k != OK)
    rows += [(f"errors: {k}", str(n)) for k, n in errors] or [("errors", "0")]
    rows += [
        ("lost / truncated streams", str(lost)),
        ("TTFT p50 / p90 / p99 / max (ms)", " / ".join(ms(ttft, q) for q in (0.5, 0.9, 0.99, 1.0))),
        ("latency p50 / p90 / p99 / max (ms)", " / ".join(ms(total, q) for q in (0.5, 0.9, 0.99, 1.0))),
    ]
    before, after = run.before, run.after[-1] if run.after else None
    peak = max((m.queen_rss for m in run.during), default=None)
    rows += [
        ("queen RSS before / max during / after (MiB)",
         f"{mib(before.queen_rss if before else None)} / {mib(peak)} / {mib(after.queen_rss if after else None)}"),
        ("queen RSS after - before (MiB)",
         f"{(after.queen_rss - before.queen_rss) / MiB:+.1f}" if before and after else "-"),
    ]
    if len(run.after) > 1:  # the first round sets the allocator's high-water mark; a leak keeps climbing after it
        rows.append(("queen RSS after each round (MiB)", " / ".join(mib(m.queen_rss) for m in run.after)))
    rows += [
        ("worker RSS before / max during / after (MiB)",
         f"{mib(before.workers_rss if before else None)} / "
         f"{mib(max((m.workers_rss for m in run.during), default=None))} / "
         f"{mib(after.workers_rss if after else None)}"),
        ("queen open fds before / max during / after",
         f"{before.queen_fds if before else '-'} / {max((m.queen_fds for m in run.during), default='-')} / "
         f"{after.queen_fds if after else '-'}"),
        ("ready workers after the load", "-" if run.workers_after < 0 else f"{run.workers_after} (RBEE_MAX_REPLICAS "
         f"{args.replicas}{', exceeded' if run.workers_after > args.replicas else ''})"),
        ("requests in flight after the load", str(run.in_flight_after) if run.in_flight_after >= 0 else "-"),
    ]

    failures = []
    if lost:
        failures.append(f"{lost} lost or truncated stream(s)")
    bad = [f"{k} x{n}" for k, n in errors if k != REFUSAL]
    if bad:
        failures.append("errors: " + ", ".join(bad))
    if run.in_flight_after > 0:
        failures.append(f"{run.in_flight_after} request(s) still in flight {args.settle:g} s after the load")
    if run.queen_died:
        failures.append("the queen died during the load")
    if not ok:
        failures.append("no request succeeded")
    return rows, failures


def queen_log(path: Path) -> Counter[str]:
    """The queen's WARNING and ERROR lines, counted, without timestamps and with numbers (ids, ports) as N:
    what the queen recovered from without the clients noticing (a retry on another worker) shows here."""
    found: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)", line)
        if match:
            found[f"{match.group(1)} {re.sub(r'[0-9]+', 'N', match.group(2))[:200]}"] += 1
    return found


def stop_queen(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait; SIGKILL its process group (the queen and its workers) if it does not stop."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print("the queen did not stop within 30 s of SIGTERM; killing its process group", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=256, help="concurrent streaming clients (default 256)")
    parser.add_argument("--duration", type=float, default=60, help="seconds the clients keep sending (default 60)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (default 32)")
    parser.add_argument("--slots", type=int, default=8, help="slots per worker, RBEE_WORKER_SLOTS (default 8)")
    parser.add_argument("--replicas", type=int, default=1, help="workers the model may get, RBEE_MAX_REPLICAS "
                        "(default 1)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    parser.add_argument("--queue", type=int, default=None, help="waiting requests the queen accepts, per model "
                        "and in all: RBEE_QUEUE_PER_MODEL / RBEE_QUEUE_MAX (default: --clients, never below the "
                        "queen's defaults 64 / 256); below --clients it exercises back-pressure")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one request may take (default 300)")
    parser.add_argument("--settle", type=float, default=5, help="seconds after the load before the 'after' "
                        "measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="run the load this many times on the same queen, "
                        "measuring after each: memory that keeps growing from round to round is a leak, while one "
                        "round alone also shows the allocator's high-water mark (default 1)")
    args = parser.parse_args()
    if min(args.clients, args.max_tokens, args.slots, args.replicas, args.rounds) < 1 or args.duration <= 0:
        parser.error("--clients, --duration, --max-tokens, --slots, --replicas and --rounds must be positive")
    # (per model, in all): room for every client unless --queue says otherwise
    queue = (args.queue, args.queue) if args.queue is not None else (max(args.clients, 64), max(args.clients, 256))

    found = engine.locate()
    if found is None:
        sys.exit("no llama-server: run `rbee engine install` first")
    run: Run | None = None
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        model = str(write_tiny_model(Path(tmp) / "tiny.gguf"))
        port = free_port()
        env = {**os.environ, "RBEE_HOME": tmp, "RBEE_QUEEN_PORT": str(port), "RBEE_LLAMA_SERVER": str(found[0]),
               "RBEE_WORKER_SLOTS": str(args.slots), "RBEE_WORKER_THREADS": str(args.threads),
               "RBEE_WORKER_CONTEXT": "1024", "RBEE_MAX_REPLICAS": str(args.replicas),
               "RBEE_QUEUE_PER_MODEL": str(queue[0]), "RBEE_QUEUE_MAX": str(queue[1]),
               "RBEE_QUEUE_TIMEOUT_S": str(max(1, int(args.timeout))), "RBEE_LOG_LEVEL": "WARNING"}
        log_path = Path(tmp) / "queen.log"
        with log_path.open("wb") as log_file:
            queen_proc = subprocess.Popen([sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--port",
                                           str(port)], env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        queen = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                if queen_proc.poll() is not None:
                    sys.exit(f"the queen exited at start (status {queen_proc.returncode}):\n"
                             f"{log_path.read_text(errors='replace')[-2000:]}")
                try:
                    if httpx.get(f"{queen}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            else:
                sys.exit("the queen did not answer /health within 30 s")
            run = asyncio.run(load(queen, model, psutil.Process(queen_proc.pid), args))
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the queen", file=sys.stderr)
        finally:
            stop_queen(queen_proc)
        logged = queen_log(log_path)
        if run is not None and run.queen_died:
            print(f"the queen died; the end of its log:\n{log_path.read_text(errors='replace')[-3000:]}")
    if run is None:
        sys.exit(130)

    rows, failures = report(run, args, queue)
    levels = Counter(line.split(" ", 1)[0] for line in logged.elements())
    rows.append(("queen log warnings / errors", f"{levels['WARNING']} / {levels['ERROR'] + levels['CRITICAL']}"))
    print(f"\nload: {args.clients} streaming clients for {args.duration:g} s, tiny model, {args.max_tokens} tokens/"
          f"request, {args.slots} slots x {args.replicas} replica(s), worker -t {args.threads}, "
          f"{os.cpu_count()} cores (client, queen and workers share them)")
    print(f"queue bound {queue[0]} per model / {queue[1]} in all: "
          + ("room for every client, so a correct queen refuses none\n" if min(queue) >= args.clients else
             "below --clients, so queue_full refusals are expected (reported, not a failure)\n"))
    header = ("metric", "value")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if logged:
        print("\nthe queen logged (most frequent first; numbers shown as N):")
        for line, count in logged.most_common(8):
            print(f"  {count:6d} x {line}")
    print(f"\n{'FAIL: ' + '; '.join(failures) if failures else 'PASS'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
