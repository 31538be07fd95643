"""A request longer than its worker's context (issue 18, point 6), as pure functions.

    (1) llama-server refuses a prompt that does not fit a slot with a 400 naming both numbers
        ("request (N tokens) exceeds the available context size (M tokens)"): `exceeded` reads them;
    (2) a worker serves a request when its context per slot is at least what the request needs, or its
        model's whole trained context (no worker of that model has more): `satisfies`;
    (3) a prompt of N tokens needs the next power of two above N, at most the trained context (or, for a
        model whose header names none, RBEE_WORKER_MAX_CONTEXT); a context set by hand
        (RBEE_WORKER_CONTEXT, `context` in models.toml) is kept: `larger` says which context to ask for,
        or why none can serve it, with the numbers and the setting to change.

The scheduler filters workers with `satisfies` and loads one with the context `larger` chose
(memory allowing); inference.py retries there once, before any byte reached the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

_EXCEEDED = re.compile(r"\((\d+) tokens\) (?:exceeds the available|is larger than the max) context size "
                       r"\((\d+) tokens\)")

if TYPE_CHECKING:
    from rbee.queen.spill import AnyWorker


def exceeded(message: str) -> tuple[int, int] | None:
    """(the prompt's tokens, the worker's context per slot) from llama-server's "too long" error, else None."""
    found = _EXCEEDED.search(message)
    return (int(found.group(1)), int(found.group(2))) if found else None


def satisfies(context: int, needed: int | None, trained: int | None) -> bool:
    """Whether a worker with `context` tokens per slot serves a request that needs `needed` (None: any)."""
    return needed is None or context >= min(needed, trained or needed)


def needed_for(tokens: int) -> int:
    """The context per slot a prompt of `tokens` tokens asks for: the next power of two above it."""
    return 1 << max(tokens, 15).bit_length()


@dataclass(frozen=True)
class Larger:
    """The context per slot to load a worker with; or, when `context` is None, why no worker can serve it."""

    context: int | None
    why: str = ""


def larger(model: str, tokens: int, context: int, trained: int | None, most: int, hand_set: str | None) -> Larger:
    """Which context per slot serves a prompt of `tokens` that a worker with `context` refused.

    `trained`: the model's trained context (None: its header names none, and `most`, RBEE_WORKER_MAX_CONTEXT,
    caps it instead); `hand_set`: the setting that fixed the context, if one did."""
    worker = f"the worker of '{model}' has {context} tokens per slot"
    if hand_set is not None:
        told = f"; it was trained for {trained} tokens" if trained else ""
        return Larger(None, f"{worker}, set by {hand_set}: raise it to serve this prompt{told}")
    if trained:
        cap, limit = trained, f"was trained for {trained} tokens"
        advice = ("shorten the prompt or use a model trained for a longer context (RBEE_WORKER_CONTEXT, or "
                  "`context` for this model in models.toml, forces a context beyond it)")
    else:
        cap, limit = most, f"gets at most {most} tokens per slot (RBEE_WORKER_MAX_CONTEXT: its header names no " \
                           "trained context)"
        advice = "raise RBEE_WORKER_MAX_CONTEXT, or set RBEE_WORKER_CONTEXT or `context` for this model in models.toml"
    if tokens >= cap:
        return Larger(None, f"{worker}, and '{model}' {limit}, fewer than the prompt's {tokens}: {advice}")
    return Larger(min(needed_for(tokens), cap))


def worker_fits(worker: AnyWorker, context: int | None) -> bool:
    """Whether `worker` has the context per slot a request needs (`satisfies`)."""
    return satisfies(worker.spec.context_per_slot, context, worker.spec.model.context_length)
