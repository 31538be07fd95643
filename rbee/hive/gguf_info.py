"""Read what a GGUF file says about itself, from its header only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


class NotAGGUFError(ValueError):
    """The file is missing, unreadable, or not a GGUF model."""


@dataclass(frozen=True)
class GGUFSummary:
    architecture: str | None
    name: str | None
    context_length: int | None
    pooling: str | None


def read_summary(path: Path) -> GGUFSummary:
    """Parse the header of `path` (blocking: call it in a thread)."""
    from gguf import GGUFReader  # imported lazily: it pulls in numpy

    try:
        reader = GGUFReader(str(path), "r")
    except FileNotFoundError as exc:
        raise NotAGGUFError(f"{path}: no such file") from exc
    except (ValueError, OSError) as exc:
        raise NotAGGUFError(f"{path} is not a GGUF model file ({exc})") from exc

    def field(key: str) -> object | None:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    arch_s = str(arch) if arch is not None else None
    ctx = field(f"{arch_s}.context_length") if arch_s else None
    pooling = field(f"{arch_s}.pooling_type") if arch_s else None
    name = field("general.name")
    return GGUFSummary(
        architecture=arch_s,
        name=str(name) if name is not None else None,
        context_length=int(ctx) if isinstance(ctx, int) else None,
        pooling=POOLING_NAMES.get(int(pooling), str(pooling)) if isinstance(pooling, int) else None,
    )
