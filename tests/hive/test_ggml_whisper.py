"""A whisper.cpp ggml model is recognised from its first bytes: kind "speech", beside GGUF models."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from rbee.hive.catalog import describe_file, name_for_file
from rbee.hive.estimate import SPEECH_OVERHEAD, estimate
from rbee.hive.ggml_whisper import read_whisper
from rbee.hive.gguf_info import NotAGGUFError
from tests.fixtures.tiny_whisper import N_VOCAB, STATE


def test_a_whisper_model_is_a_speech_model(tiny_whisper: Path) -> None:
    entry = describe_file(tiny_whisper)
    assert entry.name == "ggml-tiny-test" and entry.kind == "speech" and entry.architecture == "whisper"
    assert entry.quantization == "F16" and entry.context_length == 448
    assert entry.header["vocab_size"] == N_VOCAB and entry.header["embedding_length"] == STATE
    assert entry.model_dump()["kind"] == "speech"  # the catalog API shows it


def test_a_gguf_model_is_still_read_as_gguf(tiny_model: Path, tiny_rerank_model: Path) -> None:
    assert read_whisper(tiny_model) is None
    assert describe_file(tiny_model).kind == "text" and describe_file(tiny_rerank_model).kind == "rerank"


@pytest.mark.parametrize("content", [
    b"",
    b"ggml",  # the magic, cut short
    struct.pack("<I11i", 0x67676D6C, 32000, 1500, 64, 1, 1, 448, 64, 1, 1, 80, 1),  # llama's old ggml: no whisper
    b"hello, not a model at all" * 4,
])
def test_other_files_are_neither(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    assert read_whisper(path) is None
    with pytest.raises(NotAGGUFError, match=r"nor a whisper\.cpp ggml model"):
        describe_file(path)


def test_a_speech_models_memory_is_its_weights_plus_a_documented_share(tiny_whisper: Path) -> None:
    entry = describe_file(tiny_whisper)
    summary = read_whisper(tiny_whisper)
    assert summary is not None
    need = estimate(summary, entry.size_bytes, 0, 1)
    assert need.kv_cache == 0 and need.overhead == SPEECH_OVERHEAD
    assert need.total == entry.size_bytes + entry.size_bytes * 2 // 5 + SPEECH_OVERHEAD


def test_names_drop_the_bin_suffix_too() -> None:
    assert name_for_file(Path("ggml-base.en.bin")) == "ggml-base.en"
    assert name_for_file(Path("Qwen2.5-7B.gguf")) == "qwen2.5-7b"


async def test_speech_workers_beyond_loopback_need_the_hives_front(tmp_path: Path, tiny_whisper: Path) -> None:
    """whisper-server takes no API key: a hive whose workers listen on its LAN address and that has no front
    (rbee/hive/front.py) for it refuses to start one."""
    from rbee.common.jobs import JobFailed
    from rbee.contracts.workers import WorkerMode
    from rbee.hive.service import Hive

    hive = Hive("far", state=tmp_path / "state", address="192.0.2.7")
    entry = await hive.catalog.add_file(tiny_whisper)
    with pytest.raises(JobFailed, match=r"no API key, and hive .far. serves its workers at 192\.0\.2\.7 with no front"):
        await hive.spawn_worker(entry, WorkerMode.TRANSCRIBE)
    assert hive.supervisor.workers() == []
    assert await hive.shape(entry) == (0, 1)  # one request at a time, no context to size
