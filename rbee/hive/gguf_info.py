"""Read what a GGUF file says about itself, from its header only (never the weights)."""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from rbee.contracts.models import IMAGE_ARCHITECTURE

GGUF_MAGIC = 0x46554747  # b"GGUF", read little-endian
# GGUF's value types (the file format's own numbering, gguf.GGUFValueType): the numeric ones' struct formats
_STRING, _ARRAY = 8, 9
_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SIZES = {kind: struct.calcsize(fmt) for kind, fmt in _FORMATS.items()}
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
# llama.cpp's file types (general.file_type) by number, as gguf.LlamaFileType names them without "MOSTLY_"; a
# table here, since the gguf package's constants module costs the daemon ~0.3 MB for these 36 names (its `__init__`
# ~13 MB with numpy). tests/hive/test_catalog.py checks it against the installed package.
FILE_TYPES = {0: "ALL_F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
              26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
              37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 1024: "GUESSED"}


DIFFUSION_PREFIXES = ("model.diffusion_model.", "unet.")
"""Tensor names of a diffusion model, as stable-diffusion.cpp's own GGUF conversions (and city96's) name them;
such files carry no `general.architecture`, so gguf_info calls them IMAGE_ARCHITECTURE."""


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


class _Header:
    """A GGUF header parsed straight from the mapped file: key/values and tensor sizes.

    `gguf.GGUFReader` builds numpy views for every array element, which takes seconds for a real
    tokenizer (4.6 s for SmolLM2's 49k tokens); this walks the same layout and skips arrays it does
    not need, in milliseconds, without importing the gguf package (and numpy: ~20 MB in the daemon).
    """

    def __init__(self, path: Path) -> None:
        # The messages never quote the file: its first bytes could be a secret (/etc/shadow begins "root:").
        try:
            with path.open("rb") as fh:
                self._buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError as exc:
            raise NotAGGUFError(f"{path}: no such file") from exc
        except PermissionError as exc:
            raise NotAGGUFError(f"{path} cannot be read by the hive's user") from exc
        except (ValueError, OSError) as exc:  # an empty file cannot be mapped, nor can a folder
            raise NotAGGUFError(f"{path} is not a GGUF model file (it is empty, or not a regular file)") from exc
        try:
            magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", self._buf, 0)
            if magic != GGUF_MAGIC:
                raise NotAGGUFError(f"{path} is not a GGUF model file (it does not begin with GGUF's magic bytes)")
            if version not in (2, 3):
                raise NotAGGUFError(f"{path} is a GGUF file of version {version}, which rbee cannot read (2 or 3)")
            self._pos = 24
            self.fields: dict[str, object] = {}
            for _ in range(n_kv):
                key = self._string()
                self.fields[key] = self._value(self._u32())
            self.tensor_elements = []
            self.diffusion = False  # a stable-diffusion.cpp model: its UNet's (or DiT's) tensors are here
            for _ in range(n_tensors):
                self.diffusion = self._string().startswith(DIFFUSION_PREFIXES) or self.diffusion
                dims = struct.unpack_from(f"<{self._u32()}Q", self._buf, self._pos)
                self._pos += 8 * len(dims) + 4 + 8  # dims, type, offset
                self.tensor_elements.append(math.prod(dims))
        except NotAGGUFError:
            raise
        except (struct.error, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise NotAGGUFError(f"{path} is not a GGUF model file (its header is damaged or cut short)") from exc
        finally:
            self._buf.close()

    def _u32(self) -> int:
        (value,) = struct.unpack_from("<I", self._buf, self._pos)
        self._pos += 4
        return int(value)

    def _string(self) -> str:
        (length,) = struct.unpack_from("<Q", self._buf, self._pos)
        start = self._pos + 8
        self._pos = start + length
        return self._buf[start:self._pos].decode()

    def _value(self, kind: int) -> object:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item = self._u32()
            (count,) = struct.unpack_from("<Q", self._buf, self._pos)
            self._pos += 8
            if item in _SIZES and count <= 1024:  # small numeric arrays (per-layer values): keep
                values = struct.unpack_from(f"<{count}{_FORMATS[item][1]}", self._buf, self._pos)
                self._pos += count * _SIZES[item]
                return list(values)
            if item in _SIZES:
                self._pos += count * _SIZES[item]
            elif item in (_STRING, _ARRAY):  # strings (tokens, merges) or nested arrays: walk past them
                for _ in range(count):
                    self._value(item)
            else:
                raise ValueError(f"unknown GGUF value type {item}")
            return _Skipped(count)
        (value,) = struct.unpack_from(_FORMATS[kind], self._buf, self._pos)  # KeyError: an unknown type
        self._pos += _SIZES[kind]
        return value


@dataclass(frozen=True)
class _Skipped:
    """An array the header reader stepped over; only its length is kept."""

    count: int


def read_summary(path: Path) -> GGUFSummary:
    """Parse the header of `path` (and of its other parts, if split). Blocking: call it in a thread."""
    header = _Header(path)
    fields = header.fields

    arch = fields.get("general.architecture")
    arch_s = str(arch) if arch else IMAGE_ARCHITECTURE if header.diffusion else None

    def arch_int(key: str) -> int | None:
        return _int(fields.get(f"{arch_s}.{key}")) if arch_s else None

    parameters = sum(header.tensor_elements)
    for part in split_parts(path)[1:]:
        parameters += sum(_Header(part).tensor_elements)
    file_type = _int(fields.get("general.file_type"))
    quant = None if file_type is None else FILE_TYPES.get(file_type, f"type {file_type}")
    pooling = arch_int("pooling_type")
    tokens = fields.get("tokenizer.ggml.tokens")
    name = fields.get("general.name")
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
        vocab_size=arch_int("vocab_size") or (tokens.count if isinstance(tokens, _Skipped) else None),
        quantization=quant,
        parameter_count=parameters or None,
    )
