"""Ollama's `keep_alive`: how long a model stays loaded after its last request.

`"5m"`, `"1h30m"`, `"90s"`, a number of seconds, `"-1"` or any negative: forever; `0`: unload as
soon as the request ends. `None` in, `None` out: the caller falls back to its default. A duration
longer than LONGEST_S is forever too (a worker's info cannot count down from 1e133 seconds).
"""

from __future__ import annotations

import functools
import re

FOREVER = float("inf")
LONGEST_S = 2.0**40  # about 35,000 years: contracts.bounds.Seconds
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse(value: str | int | float | None) -> float | None:
    """Seconds to keep a model loaded (`FOREVER` for negative values); `ValueError` for nonsense."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration like '5m' or a number of seconds")
    if isinstance(value, int | float):
        return _seconds(value)
    return _text_seconds(value) if len(value) <= 32 else _text_seconds.__wrapped__(value)


@functools.lru_cache(maxsize=64)  # every request parses RBEE_KEEP_ALIVE's default (or its own, mostly the same)
def _text_seconds(value: str) -> float:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _seconds(number)
    if text.startswith("-"):
        return FOREVER
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"keep_alive {value!r} is not a duration like '5m', '1h30m', '90s' or -1")
    return _seconds(sum(float(n) * _UNITS[u] for n, u in parts))


def _seconds(number: int | float) -> float:
    """A number of seconds as a keep_alive (compared before float(): a huge int does not fit one)."""
    if number != number:
        raise ValueError("keep_alive must be a duration like '5m' or a number of seconds, not NaN")
    return FOREVER if number < 0 or number > LONGEST_S else float(number)
