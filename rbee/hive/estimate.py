"""How much memory a model needs to serve, from its GGUF header (DESIGN.md decision 6).

    total = weights + KV cache + compute buffer + overhead

- weights: the GGUF files' size (the tensors are mapped as they are stored);
- KV cache: K and V for every layer, for `context_per_slot x slots` tokens, f16 (2 bytes);
- compute buffer: llama.cpp's scratch for one micro-batch of 512 tokens: f32 logits and
  activations, plus the attention scores against one slot's context (f32, every head), which
  is what dominates without flash attention; at least 64 MiB (measured: ~300 MiB for a 7B
  model at 4096 tokens);
- overhead: a fixed allowance per device for the runtime (CUDA context, allocator slack), plus the host-memory
  prompt cache a text worker may fill (RBEE_WORKER_CACHE_RAM_MIB, llama-server's `--cache-ram`; 0 by default).
  That cache lives in RAM even for a GPU worker, so counting it on the worker's device is conservative there.

A whisper.cpp model (speech-to-text; one request at a time, no KV cache to size) needs its weights plus 40 %
for its compute buffers and KV caches, plus SPEECH_OVERHEAD: that covers whisper.cpp's own table of total
memory by model (tiny 75 MB file / 273 MB, base 142 / 388, small 466 / 852, medium 1.5 G / 2.1 G, large
2.9 G / 3.9 G); the generated test model (7 MB) measured 105 MB of buffers here.

A stable-diffusion.cpp model (text-to-image; one request at a time) needs its weights (loaded into its own
buffers as stored) plus its compute buffers for the largest image a request may ask (RBEE_IMAGE_MAX_PIXELS):
IMAGE_BYTES_PER_PIXEL covers the largest of them, the VAE decoding the image (stable-diffusion.cpp logs ~1.6 GB
for a 512x512 SD1.x image without tiling, ~6.4 kB a pixel; the UNet's buffer comes first and is smaller), plus
OVERHEAD.
"""

from __future__ import annotations

from dataclasses import dataclass

from rbee.common import settings
from rbee.contracts.models import IMAGE_ARCHITECTURE
from rbee.hive.gguf_info import GGUFSummary

MiB = 1024 * 1024
UBATCH = 512
KV_BYTES = 2  # f16 cache
OVERHEAD = 256 * MiB
SPEECH_OVERHEAD = 220 * MiB
SPEECH_ARCHITECTURE = "whisper"
IMAGE_BYTES_PER_PIXEL = 6400


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
    if summary.architecture == SPEECH_ARCHITECTURE:
        return MemoryEstimate(weights=weights_bytes, kv_cache=0, compute=weights_bytes * 2 // 5,
                              overhead=SPEECH_OVERHEAD)
    if summary.architecture == IMAGE_ARCHITECTURE:
        compute = max(64 * MiB, settings.image_max_pixels() * IMAGE_BYTES_PER_PIXEL)
        return MemoryEstimate(weights=weights_bytes, kv_cache=0, compute=compute, overhead=OVERHEAD)
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
    return MemoryEstimate(weights=weights_bytes, kv_cache=kv, compute=compute,
                          overhead=OVERHEAD + settings.worker_cache_ram_mib() * MiB)


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


@dataclass(frozen=True)
class Offload:
    """A worker too large for its GPU(s), split by layers as Ollama does: `gpu_layers` of `layers` (what
    llama-server's --n-gpu-layers counts: the repeating layers, and the output layer as one more) on the GPUs
    with the runtime, the rest of the layers in RAM."""

    layers: int
    gpu_layers: int
    gpu: int  # bytes on the GPU(s)
    cpu: int  # bytes in RAM

    def describe(self, gpus: str) -> str:
        """"cuda0 24/33 layers + cpu 9/33"."""
        return f"{gpus} {self.gpu_layers}/{self.layers} layers + cpu {self.layers - self.gpu_layers}/{self.layers}"


def offload(need: int, block_count: int | None, gpu_room: int) -> Offload | None:
    """How a worker of `need` bytes (estimate().total) splits between GPUs with `gpu_room` bytes and RAM: the
    runtime (OVERHEAD) and as many layers as fit on the GPUs, each layer an equal share of the rest (its
    weights, its KV cache and its part of the compute buffer), the other layers in RAM. None when every layer
    fits (no offload needed), when not one does, or when the header names no layer count."""
    if not block_count:
        return None
    layers = block_count + 1
    per_layer = max(1, -(-(need - OVERHEAD) // layers))
    fit = (gpu_room - OVERHEAD) // per_layer
    if fit < 1 or fit >= layers:
        return None
    gpu = OVERHEAD + fit * per_layer
    return Offload(layers=layers, gpu_layers=fit, gpu=gpu, cpu=need - gpu)
