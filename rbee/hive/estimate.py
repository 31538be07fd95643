"""How much memory a model needs to serve, from its GGUF header (DESIGN.md decision 6).

    total = weights + KV cache + compute buffer + overhead

- weights: the GGUF files' size (the tensors are mapped as they are stored);
- KV cache: K and V for every layer, for `context_per_slot x slots` tokens, f16 (2 bytes);
- compute buffer: llama.cpp's scratch for one micro-batch of 512 tokens: f32 logits and
  activations, plus the attention scores against one slot's context (f32, every head), which
  is what dominates without flash attention; at least 64 MiB (measured: ~300 MiB for a 7B
  model at 4096 tokens);
- overhead: a fixed allowance per device for the runtime (CUDA context, allocator slack).
"""

from __future__ import annotations

from dataclasses import dataclass

from rbee.hive.gguf_info import GGUFSummary

MiB = 1024 * 1024
UBATCH = 512
KV_BYTES = 2  # f16 cache
OVERHEAD = 256 * MiB


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead


def estimate(summary: GGUFSummary, weights_bytes: int, context_per_slot: int, slots: int) -> MemoryEstimate:
    tokens = context_per_slot * slots
    kv = 0
    dims = summary.head_dims
    if dims and summary.block_count and summary.head_count_kv:
        k_dim, v_dim = dims
        kv = summary.block_count * tokens * summary.head_count_kv * (k_dim + v_dim) * KV_BYTES
    vocab = summary.vocab_size or 32000
    embd = summary.embedding_length or 4096
    heads = summary.head_count or 32
    compute = max(64 * MiB, UBATCH * (vocab + 4 * embd) * 4 + UBATCH * context_per_slot * heads * 4)
    return MemoryEstimate(weights=weights_bytes, kv_cache=kv, compute=compute, overhead=OVERHEAD)


MIN_AUTO_CONTEXT = 2048


def fitting_context(summary: GGUFSummary, weights_bytes: int, slots: int, room: int, most: int,
                    fallback: int) -> int:
    """The context per slot a model gets when nobody set one: its trained context (`fallback` when its header
    names none), at most `most`, halved while a worker of it would not fit in `room` bytes (as Ollama sizes
    its context by the memory there is), but not below MIN_AUTO_CONTEXT (or the trained context, if smaller)."""
    context = min(summary.context_length or fallback, most)
    floor = min(context, MIN_AUTO_CONTEXT)
    while context > floor and estimate(summary, weights_bytes, context, slots).total > room:
        context = max(floor, context // 2)
    return context
