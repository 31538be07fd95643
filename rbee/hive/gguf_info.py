"""Read what a GGUF file says about itself, from its header only (never the weights)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


class NotAGGUFError(ValueError):
    """The file is missing, unreadable, or not a GGUF model."""


@dataclass(frozen=True)
class GGUFSummary:
    architecture: str | None
    name: str | None = None
    context_length: int | None = None
    pooling: str | None = None
    block_count: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    vocab_size: int | None = None
    quantization: str | None = None
    parameter_count: int | None = None

    @property
    def head_dims(self) -> tuple[int, int] | None:
        """(key, value) dimensions per KV head, when the header says enough to know them."""
        if self.key_length and self.value_length:
            return self.key_length, self.value_length
        if self.embedding_length and self.head_count:
            dim = self.embedding_length // self.head_count
            return dim, dim
        return None


def split_parts(first: Path) -> list[Path]:
    """All parts of a split GGUF given its first part (`x-00001-of-00003.gguf`), or `[first]`."""
    match = SPLIT_RE.search(first.name)
    if not match:
        return [first]
    count = int(match.group(2))
    stem = first.name[: match.start()]
    return [first.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _int(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and isinstance(value[0], int):
        return max(value)  # per-layer values (some architectures): the largest bounds the memory
    return None


def read_summary(path: Path) -> GGUFSummary:
    """Parse the header of `path` (and of its other parts, if split). Blocking: call it in a thread."""
    from gguf import GGUFReader, LlamaFileType  # imported lazily: it pulls in numpy

    def open_reader(p: Path) -> GGUFReader:
        try:
            return GGUFReader(str(p), "r")
        except FileNotFoundError as exc:
            raise NotAGGUFError(f"{p}: no such file") from exc
        except (ValueError, OSError) as exc:
            raise NotAGGUFError(f"{p} is not a GGUF model file ({exc})") from exc

    reader = open_reader(path)

    def field(key: str) -> object | None:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    arch_s = str(arch) if arch is not None else None

    def arch_int(key: str) -> int | None:
        return _int(field(f"{arch_s}.{key}")) if arch_s else None

    parameters = sum(int(t.n_elements) for t in reader.tensors)
    for part in split_parts(path)[1:]:
        parameters += sum(int(t.n_elements) for t in open_reader(part).tensors)
    file_type = _int(field("general.file_type"))
    try:
        quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = f"type {file_type}"
    pooling = arch_int("pooling_type")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    name = field("general.name")
    return GGUFSummary(
        architecture=arch_s,
        name=str(name) if name is not None else None,
        context_length=arch_int("context_length"),
        pooling=POOLING_NAMES.get(pooling, str(pooling)) if pooling is not None else None,
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv") or arch_int("attention.head_count"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        vocab_size=arch_int("vocab_size") or (len(tokens.data) if tokens is not None else None),
        quantization=quant,
        parameter_count=parameters or None,
    )
