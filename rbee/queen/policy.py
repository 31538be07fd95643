"""A user policy: a Python file (RBEE_POLICY) that filters and ranks where a request goes.

The file defines one function:

    def rank(request, candidates):
        '''Return the candidates this request may use, best first.'''
        if request.prompt_tokens > 8000:
            return [c for c in candidates if "4090" in c.device_name]
        return candidates

It is asked twice per decision, with the same `request` (a `PolicyRequest`):
  - which ready worker with a free slot serves it (`candidates` are workers: `c.worker` is set);
  - where a new worker of the model goes (`candidates` are devices with room: `c.worker` is None).
What it leaves out is not used for that request: it waits for a worker it allows instead, and an
allowed device gets one when memory allows. When it leaves out every device, the built-in choice is
used (so that no request waits forever) and that is logged.

Whatever goes wrong in the file (it does not load, has no `rank`, raises, returns something that is
not a list of the candidates it was given) is logged and shown in `rbee status` (`/v1/status`'s
`policy`), and the built-in choice is used. The file is loaded at start and again whenever it changes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rbee.contracts.status import PolicyStatus

log = logging.getLogger(__name__)

Rank = Callable[["PolicyRequest", list["Candidate"]], Any]


@dataclass(frozen=True)
class PolicyRequest:
    """What the policy knows about a request."""

    model: str  # the name the client asked for
    mode: str  # "generate" or "embed"
    prompt_tokens: int  # an estimate (a quarter of the body's bytes): good for "long prompt" rules
    max_tokens: int | None = None
    hive: str | None = None  # the hive the client or the model's settings pinned, if any


@dataclass(frozen=True)
class Candidate:
    """A ready worker with a free slot (`worker` set), or a device a new worker could go to."""

    hive: str
    device: str  # "cpu", "cuda0"...
    device_name: str  # e.g. "NVIDIA GeForce RTX 4090", "CPU (16 threads)"
    memory_total: int
    worker: str | None = None
    in_flight: int = 0
    slots: int = 0


class Policy:
    """The loaded user policy, if any; `rank` never raises."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._rank: Rank | None = None
        self._mtime: float | None = None
        self.error: str | None = None
        self._errors_logged: set[str] = set()

    @classmethod
    def from_env(cls) -> Policy:
        raw = os.environ.get("RBEE_POLICY", "").strip()
        return cls(Path(raw).expanduser() if raw else None)

    @property
    def active(self) -> bool:
        return self._rank is not None

    def status(self) -> PolicyStatus:
        return PolicyStatus(path=str(self.path) if self.path else None, loaded=self.active, error=self.error)

    def reload_if_changed(self) -> None:
        """(Re)load the file when it is new or changed. Blocking (it runs the file): call it from a thread."""
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            self._failed(f"cannot read the policy file {self.path}: {exc.strerror}")
            self._mtime = None
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            module = _load(self.path)
        except Exception as exc:  # the user's code: anything can happen in it
            self._failed(f"the policy file {self.path} does not load: {_describe(exc)}")
            return
        rank = getattr(module, "rank", None)
        if not callable(rank):
            self._failed(f"the policy file {self.path} defines no function rank(request, candidates)")
            return
        self._rank, self.error = rank, None
        log.info("policy: loaded %s", self.path)

    def rank(self, request: PolicyRequest | None, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates the policy allows, best first; all of them, in order, without a (working) policy."""
        given = list(candidates)
        if self._rank is None or request is None or not given:
            return given
        try:
            chosen = self._rank(request, list(given))
        except Exception as exc:
            self._failed(f"the policy's rank() raised {_describe(exc)}; the built-in choice is used", runtime=True)
            return given
        if not isinstance(chosen, list | tuple) or any(c not in given for c in chosen):
            self._failed("the policy's rank() must return a list of the candidates it was given (some of them, "
                         f"best first), not {type(chosen).__name__}; the built-in choice is used", runtime=True)
            return given
        return list(dict.fromkeys(chosen))

    def _failed(self, message: str, runtime: bool = False) -> None:
        """Keep the message for `rbee status`; log each distinct one once (a broken rank() fails every request)."""
        self.error = message
        if not runtime:
            self._rank = None
        if message not in self._errors_logged:
            self._errors_logged.add(message)
            log.error("policy: %s", message)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"rbee_user_policy_{time.monotonic_ns()}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _describe(exc: BaseException) -> str:
    """`ZeroDivisionError: division by zero (policy.py, line 7)`: the user's own frame, not ours."""
    ours = str(Path(__file__).parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith((ours, "<frozen"))]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    if isinstance(exc, SyntaxError):
        where = f" ({Path(exc.filename or '?').name}, line {exc.lineno})"
        return f"SyntaxError: {exc.msg}{where}"
    return f"{type(exc).__name__}: {exc}{where}"
