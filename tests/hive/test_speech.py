"""Which whisper-server a speech worker runs, on which device (rbee/hive/speech.py), and where it listens
(rbee/hive/worker_placement.py front_for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.common.jobs import JobFailed
from rbee.contracts.workers import WorkerMode
from rbee.hive import engine
from rbee.hive.engine_sources import LLAMA, SD, WHISPER, source_for
from rbee.hive.service import Hive
from rbee.hive.speech import keyless_device, keyless_engine
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
        await keyless_engine(WHISPER)
    cpu = _executable(engine.built_binary("cpu", WHISPER))
    monkeypatch.setenv("RBEE_ENGINE_BACKEND", "cuda")  # llama-server's CUDA build is the main engine
    assert engine.locate(WHISPER) is None
    assert await keyless_engine(WHISPER) == cpu
    assert await keyless_device(WHISPER, cpu, "cuda0") == "cpu"  # rbee's CPU build drives no GPU
    assert await keyless_device(WHISPER, Path("/opt/whisper-server"), "cuda0") == "cuda0"  # one of its own


def test_a_fronted_engine_is_served_by_the_hive_api_beyond_loopback(no_whisper: Path) -> None:
    whisper, sd = source_for(WorkerMode.TRANSCRIBE), source_for(WorkerMode.IMAGE)
    assert whisper.fronted and sd.fronted and not LLAMA.fronted and source_for(WorkerMode.EMBED) is LLAMA
    local = Hive("localhost", state=no_whisper / "a")
    assert local.front_for(whisper) is None and local.front_for(sd) is None  # the queen's own hive: loopback
    far = Hive("far", state=no_whisper / "b", address="10.1.2.3")
    with pytest.raises(JobFailed, match=r"whisper-server takes no API key, and hive 'far' serves its workers at "
                                        r"10\.1\.2\.3 with no front"):
        far.front_for(whisper)
    far.front = "https://10.1.2.3:7835"
    assert far.front_for(whisper) == "https://10.1.2.3:7835" and far.front_for(LLAMA) is None
    assert far.front_for(sd) == "https://10.1.2.3:7835"


async def test_image_workers_run_their_own_engine(no_whisper: Path) -> None:
    with pytest.raises(JobFailed, match="rbee engine install --engine sd"):
        await keyless_engine(SD)
    cpu = _executable(engine.built_binary("cpu", SD))
    assert await keyless_engine(SD) == cpu
    assert await keyless_device(SD, cpu, "cuda0") == "cpu"
