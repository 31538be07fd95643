"""Read what a whisper.cpp model file says about itself: the legacy ggml format, not GGUF.

A whisper.cpp model (`ggml-tiny.bin`, `ggml-large-v3.bin`...) begins with the int32 magic 0x67676d6c ("ggml")
and eleven int32 hyper-parameters, in this order (whisper.cpp's `whisper_model_load`): n_vocab, n_audio_ctx,
n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels,
ftype. GGUF readers refuse it; this reads those 48 bytes and nothing else.
"""

from __future__ import annotations

import struct
from pathlib import Path

from rbee.hive.gguf_info import GGUFSummary

GGML_MAGIC = 0x67676D6C
ARCHITECTURE = "whisper"
_FTYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1"}
_QNT_VERSION_FACTOR = 1000  # whisper.cpp stores the quantization version as ftype's thousands


def read_whisper(path: Path) -> GGUFSummary | None:
    """The summary of a whisper.cpp ggml model, or None when `path` is not one. Blocking."""
    try:
        with path.open("rb") as fh:
            head = fh.read(48)
    except OSError:
        return None
    if len(head) < 48 or struct.unpack_from("<I", head)[0] != GGML_MAGIC:
        return None
    (n_vocab, n_audio_ctx, n_audio_state, _n_audio_head, _n_audio_layer, n_text_ctx, n_text_state, n_text_head,
     n_text_layer, n_mels, ftype) = struct.unpack_from("<11i", head, 4)
    sane = (50_000 <= n_vocab <= 60_000 and 0 < n_audio_ctx <= 1 << 16 and 0 < n_text_ctx <= 1 << 16
            and n_audio_state == n_text_state > 0 and n_mels in (80, 128) and 0 < n_text_head and 0 < n_text_layer)
    if not sane:  # a ggml file of another kind (the old llama.cpp format shares the magic)
        return None
    quant = _FTYPES.get(ftype % _QNT_VERSION_FACTOR, f"type {ftype % _QNT_VERSION_FACTOR}")
    return GGUFSummary(architecture=ARCHITECTURE, context_length=n_text_ctx, block_count=n_text_layer,
                       embedding_length=n_text_state, head_count=n_text_head, vocab_size=n_vocab,
                       quantization=quant)
