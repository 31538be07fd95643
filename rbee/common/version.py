"""The version every part reports, so the keeper can spot a stale queen."""

from __future__ import annotations

import os
import re

from rbee import __version__


def current() -> str:
    # RBEE_REPORTED_VERSION lets a test run a queen that claims to be older than the CLI.
    return os.environ.get("RBEE_REPORTED_VERSION") or __version__


def parse(version: str) -> tuple[int, ...]:
    """`"0.10.2"` -> `(0, 10, 2)`; anything after a non-digit part is ignored."""
    parts: list[int] = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:
            break
    return tuple(parts)
