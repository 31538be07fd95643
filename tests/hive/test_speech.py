"""Which whisper-server a speech worker runs, and on which device (rbee/hive/speech.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.common.jobs import JobFailed
from rbee.hive import engine
from rbee.hive.engine_sources import SD, WHISPER
from rbee.hive.speech import is_loopback, keyless_device, keyless_engine, speech_device, speech_engine
from tests.hive.test_engine import _executable


@pytest.fixture
def no_whisper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("RBEE_WHISPER_SERVER", raising=False)
    monkeypatch.delenv("RBEE_SD_SERVER", raising=False)
    monkeypatch.setenv("RBEE_ENGINES_DIR", str(tmp_path / "engines"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path


async def test_any_build_serves_when_the_main_backend_has_none(no_whisper: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(JobFailed, match="rbee engine install --engine whisper"):
        await speech_engine("localhost", "127.0.0.1")
    cpu = _executable(engine.built_binary("cpu", WHISPER))
    monkeypatch.setenv("RBEE_ENGINE_BACKEND", "cuda")  # llama-server's CUDA build is the main engine
    assert engine.locate(WHISPER) is None
    assert await speech_engine("localhost", "127.0.0.1") == cpu
    assert await speech_device(cpu, "cuda0") == "cpu"  # rbee's CPU build drives no GPU
    assert await speech_device(Path("/opt/whisper-server"), "cuda0") == "cuda0"  # a binary of one's own: trusted


async def test_never_beyond_loopback(no_whisper: Path) -> None:
    _executable(engine.built_binary("cpu", WHISPER))
    with pytest.raises(JobFailed, match=r"hive 'far' serves its workers at 10\.1\.2\.3"):
        await speech_engine("far", "10.1.2.3")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("192.168.1.9") and not is_loopback("gaming-pc.lan")


async def test_image_workers_follow_the_same_rule_with_their_own_engine(no_whisper: Path) -> None:
    with pytest.raises(JobFailed, match="rbee engine install --engine sd"):
        await keyless_engine("image", "localhost", "127.0.0.1")
    cpu = _executable(engine.built_binary("cpu", SD))
    assert await keyless_engine("image", "localhost", "127.0.0.1") == cpu
    assert await keyless_device("image", cpu, "cuda0") == "cpu"
    with pytest.raises(JobFailed, match=r"image models are served on hives whose workers listen on loopback only "
                                        r"\(sd-server has no API key\)"):
        await keyless_engine("image", "far", "10.1.2.3")
