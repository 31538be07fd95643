"""Prefix-cache affinity (issue 20): which worker, and which of its slots, already holds the start of a request.

llama-server reuses a slot's KV cache (`cache_prompt`) only for the request that lands on that slot, so an
agent that resends its growing conversation each turn should go back to the slot that served its last turn.

The key of a request is a *chain* of cumulative hashes of its leading content (`key_of`):
  - element 0, the shared context: the model's name, the tools, and the system prompt (chat's leading
    system/developer messages, Anthropic's `system`, Responses' `instructions`, Ollama's `system`);
  - then one element per message (chat, Anthropic Messages, Responses' input items), each hashed with the one
    before it: h1 = H(h0, message 1), h2 = H(h1, message 2), ...;
  - a raw prompt (completions, a Responses string input) is cut into CHUNK-character pieces, one element each
    (only whole pieces: the start of a longer prompt later ends on the same ones).
A client's own session header (SESSION_HEADERS) is mixed into element 1, so two sessions that start alike
are still two conversations; element 0 stays shared.

The table remembers, for each (worker, slot), the chain of the last request it was given (LRU, at most
`limit` entries). A slot given to another conversation loses its KV cache, unless its worker has a host-memory
prompt cache (`--cache-ram`, RBEE_WORKER_CACHE_RAM_MIB), where llama-server saves the old prompt and restores
it for the request that resumes it in any slot: for such a worker (`record(spill=True)`) the old chain is kept
as held by the worker, on no slot (a negative slot id; at most SPILLED per worker, the oldest forgotten).
A request's preference (`prefer`):
  (1) the slot whose chain shares the longest prefix with the request's, past element 0, on a worker with a
      free slot: that worker (a *hit*), and that slot if it is free (else another free slot of the worker,
      whose llama-server finds the prefix in its host-memory prompt cache, if it has one: so a chain held on
      no slot prefers its worker only);
  (2) else, when only element 0 matches and it holds a system prompt or tools, that worker breaks ties among
      the least loaded ones (`tie`): conversations that share only a system prompt are spread as before, not
      pinned to one slot or one worker, but meet where their shared prefix already is when loads are even;
  (3) else no preference: the least-loaded choice (decide.serve).
Affinity never makes a request wait: it only chooses among workers with a free slot now. The slot within the
chosen worker (`slot_for`): the preferred one if free, else an empty slot, else the least recently used.

Pure: no I/O, no clock; the scheduler owns one table and calls it under the event loop.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from rbee.queen.requests import field_of

__all__ = ["CHUNK", "SESSION_HEADERS", "SPILLED", "Affinity", "Key", "Preference", "key_of", "session_of"]

CHUNK = 1024  # characters of a raw prompt per chain element
MAX_CHAIN = 1024  # elements kept per request: the rest of a longer one is not needed to tell it apart
SPILLED = 16  # chains remembered per worker in its host-memory prompt cache, past those on its slots
SESSION_HEADERS = ("x-session-id", "x-claude-code-session-id", "session_id", "conversation_id")
_SYSTEM_ROLES = ("system", "developer")

Chain = tuple[int, ...]
SlotKey = tuple[str, int]  # (worker id, slot id)


@dataclass(frozen=True)
class Key:
    """A request's chain; `shared`: whether element 0 holds a system prompt or tools (worth meeting for)."""

    chain: Chain
    shared: bool


@dataclass(frozen=True)
class Preference:
    worker: str | None = None  # the worker holding the longest matching prefix past element 0 (a hit)
    slot: int | None = None  # its slot that holds it
    tie: str | None = None  # only element 0 matched: the worker to prefer among the least loaded
    depth: int = 0  # elements matched


def _step(previous: int, *parts: bytes) -> int:
    digest = hashlib.blake2b(previous.to_bytes(8, "little"), digest_size=8)
    for part in parts:
        digest.update(len(part).to_bytes(4, "little"))
        digest.update(part)
    return int.from_bytes(digest.digest(), "little")


def _bytes(item: object) -> bytes:
    if isinstance(item, BaseModel):
        return item.model_dump_json(exclude_none=True).encode()
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _pieces(text: str) -> list[bytes]:
    return [text[i:i + CHUNK].encode() for i in range(0, len(text) - CHUNK + 1, CHUNK)]


def _parts(parsed: BaseModel) -> tuple[list[bytes], list[bytes]]:
    """(the shared context's parts, the conversation's elements) of a parsed request of any protocol."""
    shared = [_bytes(v) for v in (field_of(parsed, "tools"), field_of(parsed, "system"),
                                  field_of(parsed, "instructions")) if v]
    messages = field_of(parsed, "messages")
    if isinstance(messages, list):
        lead = 0
        while lead < len(messages) and getattr(messages[lead], "role", None) in _SYSTEM_ROLES:
            lead += 1
        return shared + [_bytes(m) for m in messages[:lead]], [_bytes(m) for m in messages[lead:lead + MAX_CHAIN]]
    for field in ("input", "prompt"):
        value = field_of(parsed, field)
        if value:
            return shared, _elements(value, items=field == "input")
    return shared, []


def _elements(value: object, items: bool) -> list[bytes]:
    """The elements of a prompt: CHUNK-character pieces of a string, or one per item of Responses' input."""
    if isinstance(value, str):
        return _pieces(value)
    if not isinstance(value, list) or isinstance(value[0], str):  # several prompts: no single conversation
        return []
    if items and isinstance(value[0], dict):
        return [_bytes(item) for item in value]
    return _pieces(json.dumps(value))  # token ids


def key_of(model: str, parsed: BaseModel, session: str | None = None) -> Key:
    """The chain of `parsed` (a request of chat, completions, Anthropic Messages, Responses or Ollama); empty
    when it carries nothing to match on (its slot then holds nothing the table knows)."""
    shared, elements = _parts(parsed)
    if not elements and not shared:
        return Key((), False)
    head = _step(0, model.encode(), *shared)
    chain = [head]
    for i, element in enumerate(elements[:MAX_CHAIN]):
        chain.append(_step(chain[-1], session.encode(), element) if i == 0 and session else
                     _step(chain[-1], element))
    return Key(tuple(chain), bool(shared))


def session_of(headers: Mapping[str, str]) -> str | None:
    """The client's own conversation id, from the first session header it sends (at most 200 characters)."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return value[:200]
    return None


class Affinity:
    """The chain each (worker, slot) was last given, and where each chain element is held."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._slots: OrderedDict[SlotKey, Chain] = OrderedDict()  # least recently given first
        self._holders: dict[int, set[SlotKey]] = {}
        self._spills = 0  # spilled chains ever kept: their negative slot ids

    def __len__(self) -> int:
        return len(self._slots)

    def prefer(self, key: Key | None, free: Mapping[str, Collection[int]]) -> Preference:
        """Where `key`'s longest known prefix is, among the workers in `free` (worker id -> its free slots;
        those with none are left out)."""
        if key is None:
            return Preference()
        for depth in range(len(key.chain), 0, -1):
            holders = [h for h in self._holders.get(key.chain[depth - 1], ()) if free.get(h[0])]
            if not holders:
                continue
            if depth == 1:
                return Preference(tie=self._newest(holders)[0]) if key.shared else Preference()
            free_holders = [h for h in holders if h[1] in free[h[0]]]
            worker, slot = self._newest(free_holders or holders)
            return Preference(worker, slot if free_holders else None, depth=depth)
        return Preference()

    def _newest(self, holders: list[SlotKey]) -> SlotKey:
        order = {k: i for i, k in enumerate(self._slots)} if len(holders) > 1 else {}
        return max(holders, key=lambda h: order.get(h, 0))

    def slot_for(self, worker: str, free: Collection[int], preference: Preference) -> int:
        """The slot of `worker` a request gets: the preferred one if free, else an empty one, else the one given
        least recently. `free` must not be empty."""
        if preference.worker == worker and preference.slot is not None and preference.slot in free:
            return preference.slot
        empty = [s for s in free if (worker, s) not in self._slots]
        if empty:
            return min(empty)
        order = {k: i for i, k in enumerate(self._slots)}
        return min(free, key=lambda s: order[(worker, s)])

    def record(self, worker: str, slot: int, key: Key, spill: bool = False) -> None:
        """`worker`'s `slot` was given a request of `key` (an empty chain: one that tells nothing; the slot's old
        chain is gone all the same, or, `spill`, kept as held by the worker's host-memory prompt cache when
        `key` does not continue it)."""
        where = (worker, slot)
        old = self._slots.get(where)
        self._drop(where)
        for resumed in [w for w, c in self._slots.items() if w[0] == worker and w[1] < 0 and key.chain[:len(c)] == c]:
            self._drop(resumed)  # llama-server took it out of its cache into the slot
        if spill and old and key.chain[:len(old)] != old:
            self._spill(worker, old)
        self._add(where, key.chain)

    def _add(self, where: SlotKey, chain: Chain) -> None:
        if not chain:
            return
        self._slots[where] = chain
        for element in chain:
            self._holders.setdefault(element, set()).add(where)
        while len(self._slots) > self._limit:
            self._drop(next(iter(self._slots)))

    def _spill(self, worker: str, chain: Chain) -> None:
        spilled = [w for w in self._slots if w[0] == worker and w[1] < 0]
        for where in spilled[:max(0, len(spilled) + 1 - SPILLED)]:
            self._drop(where)
        self._spills += 1
        self._add((worker, -self._spills), chain)

    def _drop(self, where: SlotKey) -> None:
        chain = self._slots.pop(where, None)
        for element in chain or ():
            holders = self._holders.get(element)
            if holders is not None:
                holders.discard(where)
                if not holders:
                    del self._holders[element]

    def forget(self, live: Iterable[str]) -> None:
        """Drop the slots of workers that are gone (`live`: the ids still there)."""
        keep = set(live)
        for where in [w for w in self._slots if w[0] not in keep]:
            self._drop(where)

    def recent(self, worker: str, limit: int) -> list[tuple[int, str]]:
        """`worker`'s slots with the conversation each last served, most recent first: (slot id, a stable key =
        the hex of the chain element that identifies the conversation, its first past the shared context, or
        the context itself for a request that had nothing else)."""
        found: list[tuple[int, str]] = []
        for (owner, slot), chain in reversed(self._slots.items()):
            if owner == worker and slot >= 0 and len(found) < limit:
                found.append((slot, f"{chain[min(1, len(chain) - 1)]:016x}"))
        return found
