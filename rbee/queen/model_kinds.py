"""Which model kinds a worker mode takes (policy for the scheduler, which checks every request by it).

A reranking worker needs a reranker: llama-server would score with any model, meaninglessly. Speech goes to a
speech (whisper) model and images to an image model, and nothing else does: each engine loads only its own kind.
"""

from __future__ import annotations

from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerMode
from rbee.queen.errors import InvalidRequest

_OWN_KIND = {  # a mode whose engine loads only its own kind -> (that kind, an example of it, the routes it serves)
    WorkerMode.TRANSCRIBE: ("speech", "whisper.cpp's ggml models, e.g. ggerganov/whisper.cpp/ggml-base.en.bin",
                            "/v1/audio/transcriptions and /v1/audio/translations"),
    WorkerMode.IMAGE: ("image", "a stable-diffusion.cpp GGUF, e.g. second-state/stable-diffusion-v1-5-GGUF",
                       "/v1/images/generations"),
}


def own_mode(kind: str) -> WorkerMode | None:
    """The mode a model of `kind` is served in when its engine loads only its own kind (speech, image)."""
    return next((mode for mode, (own, _, _) in _OWN_KIND.items() if own == kind), None)


def check_mode(entry: ModelEntry, mode: WorkerMode) -> None:
    """Refuse a model of the wrong kind for `mode`, naming its kind (InvalidRequest)."""
    if mode in _OWN_KIND and entry.kind != _OWN_KIND[mode][0]:
        kind, example, _ = _OWN_KIND[mode]
        what = "transcription and translation need" if kind == "speech" else "image generation needs"
        raise InvalidRequest(f"'{entry.name}' is {_a(entry.kind)} model; {what} {_a(kind)} model ({example}).",
                             param="model", code=f"model_not_{kind}")
    for other, (kind, _, routes) in _OWN_KIND.items():
        if mode is not other and entry.kind == kind:
            raise InvalidRequest(f"'{entry.name}' is {_a(kind)} model: it serves {routes} only.", param="model",
                                 code=f"model_is_{kind}")
    pooling = entry.pooling or entry.header.get("pooling")
    if mode is WorkerMode.RERANK and pooling != "rank":
        raise InvalidRequest(f"'{entry.name}' is not a reranker (its GGUF says pooling '{pooling}', a reranker's "
                             "says 'rank': bge-reranker or Qwen3-Reranker GGUFs, for example).", param="model",
                             code="model_not_reranker")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
