"""Ollama's names for Hugging Face models are read as rbee's, on every Ollama route's request."""

from __future__ import annotations

import pytest

from rbee.contracts.ollama import (
    OllamaChatRequest,
    OllamaDeleteRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
    rbee_name,
)


@pytest.mark.parametrize(("ollama", "rbee"), [
    ("hf.co/org/repo:Q4_K_M", "org/repo:Q4_K_M"),
    ("huggingface.co/org/repo:q8_0", "org/repo:q8_0"),
    ("https://hf.co/org/repo", "org/repo"),
    ("HF.CO/org/repo:latest", "org/repo"),  # Ollama's default tag: the default quantization
    ("hf.co/org/repo/sub/m-Q4_K_M.gguf", "org/repo/sub/m-Q4_K_M.gguf"),
    ("org/repo:Q4_K_M", "org/repo:Q4_K_M"),  # rbee's own names, as they are
    ("tiny", "tiny"),
    ("hf.com/org/repo", "hf.com/org/repo"),
])
def test_ollamas_hub_names_become_rbees(ollama: str, rbee: str) -> None:
    assert rbee_name(ollama) == rbee


@pytest.mark.parametrize(("shape", "extra"), [
    (OllamaChatRequest, {"messages": [{"role": "user", "content": "hi"}]}), (OllamaGenerateRequest, {}),
    (OllamaEmbedRequest, {"input": "x"}), (OllamaShowRequest, {}), (OllamaDeleteRequest, {})])
def test_every_ollama_request_reads_a_hub_name_as_rbees(shape: type, extra: dict[str, object]) -> None:
    assert shape.model_validate({"model": "hf.co/org/repo:Q8_0", **extra}).model == "org/repo:Q8_0"
    assert shape.model_validate({"model": "tiny", **extra}).model == "tiny"
