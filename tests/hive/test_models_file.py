"""models.toml kept in memory (rbee/hive/models_file.py): readers on the event loop never touch the disk; a
refresh in a worker thread, or the watch, picks up an edit; a damaged file is the same clear error as ever."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from rbee.common import supervise
from rbee.contracts.models import ModelSettings
from rbee.hive import model_refs, models_file
from rbee.hive.models_file import CHECK_INTERVAL_S, ModelsFile, UnreadableFile


@pytest.fixture
def toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The models.toml of an RBEE_HOME of this test's own (it need not exist yet)."""
    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    path = model_refs.user_aliases_file()
    path.parent.mkdir(parents=True)
    return path


@pytest.fixture
def disk_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that looked at or read the file, one per look."""
    seen: list[str] = []
    stamp, read = models_file._stamp, models_file._read

    def recorded(real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object) -> object:
            seen.append(threading.current_thread().name)
            return real(*args)
        return call

    monkeypatch.setattr(models_file, "_stamp", recorded(stamp))
    monkeypatch.setattr(models_file, "_read", recorded(read))
    return seen


async def test_on_the_event_loop_reads_come_from_memory_and_the_refresh_runs_in_a_worker_thread(
        toml: Path, disk_threads: list[str]) -> None:
    toml.write_text('[models."m"]\nslots = 2\n')
    await model_refs.models_file.refresh()
    assert disk_threads and threading.main_thread().name not in disk_threads
    disk_threads.clear()

    toml.write_text('[models."m"]\nslots = 3\n[aliases]\nmine = "org/repo:Q8_0"\n')
    assert model_refs.model_settings("m").slots == 2  # the loop's copy, until the next refresh
    assert "mine" not in model_refs.load_aliases()
    assert disk_threads == []  # the reads above did not touch the disk

    await model_refs.models_file.refresh()
    assert model_refs.model_settings("m").slots == 3
    assert model_refs.parse("mine").repo == "org/repo"
    assert disk_threads and threading.main_thread().name not in disk_threads


async def test_the_watch_picks_up_an_edit(toml: Path) -> None:
    toml.write_text('[models."m"]\nslots = 2\n')
    watched = ModelsFile(lambda: toml)
    looked: asyncio.Queue[float] = asyncio.Queue()  # one item per look the watch took

    async def sleep(interval: float) -> None:
        looked.put_nowait(interval)
        await asyncio.sleep(0)

    watch = supervise.every(lambda: CHECK_INTERVAL_S, watched.refresh, first=True, sleep=sleep)
    watching = asyncio.create_task(watch())
    try:
        assert await asyncio.wait_for(looked.get(), 10) == 1.0  # about once a second
        assert watched.parsed()["models"]["m"]["slots"] == 2
        toml.write_text('[models."m"]\nslots = 16\n')  # another size: seen even within the clock's tick
        async with asyncio.timeout(10):
            while watched.parsed().get("models", {}).get("m", {}).get("slots") != 16:  # a look mid-write sees {}
                await looked.get()
    finally:
        watching.cancel()
    assert watched.parsed() == {"models": {"m": {"slots": 16}}}


async def test_a_damaged_file_is_the_same_clear_error_until_it_is_mended(toml: Path) -> None:
    toml.write_text('[models."m"\nslots = 2\n')
    await model_refs.models_file.refresh()
    for read in (lambda: model_refs.model_settings("m"), model_refs.load_aliases):
        with pytest.raises(model_refs.BadModelRef, match=rf"^cannot read {toml}: .*line 1"):
            read()
    with pytest.raises(model_refs.BadModelRef, match=rf"^cannot read {toml}: "):
        await asyncio.to_thread(model_refs.all_model_settings)  # off the loop: it looks at the file itself

    toml.write_text('[models."m"]\nslots = 2\n')
    await model_refs.models_file.refresh()
    assert model_refs.model_settings("m").slots == 2


async def test_a_models_table_is_checked_once_per_read_of_the_file_and_a_bad_one_refused_every_time(
        toml: Path) -> None:
    toml.write_text('[models."m"]\nslots = 2\n[models."bad"]\nslots = "many"\n')
    await model_refs.models_file.refresh()
    assert model_refs.model_settings("m") is model_refs.model_settings("m")  # one copy, asked on every request
    assert model_refs.model_settings("absent") == ModelSettings()
    for _ in range(2):
        with pytest.raises(model_refs.BadModelRef, match=r'\[models."bad"\] slots'):
            model_refs.model_settings("bad")
    toml.write_text('[models."m"]\nslots = 4\n')
    await model_refs.models_file.refresh()
    assert model_refs.model_settings("m").slots == 4 and model_refs.model_settings("bad") == ModelSettings()


async def test_a_file_that_is_not_text_is_a_clear_error(toml: Path) -> None:
    toml.write_bytes(b"\xff\xfe[models]\n")
    await model_refs.models_file.refresh()
    with pytest.raises(model_refs.BadModelRef, match=rf"^cannot read {toml}: .*codec"):
        model_refs.load_aliases()


async def test_a_removed_file_means_no_settings(toml: Path) -> None:
    toml.write_text('[models."m"]\nslots = 2\n')
    await model_refs.models_file.refresh()
    toml.unlink()
    await model_refs.models_file.refresh()
    assert model_refs.model_settings("m") == ModelSettings() and model_refs.all_model_settings() == {}


async def test_settings_saved_through_the_api_apply_to_the_next_read_on_the_loop(
        toml: Path, disk_threads: list[str]) -> None:
    await model_refs.models_file.refresh()
    await asyncio.to_thread(model_refs.save_model_settings, "m", ModelSettings(slots=5))
    disk_threads.clear()
    assert model_refs.model_settings("m").slots == 5 and disk_threads == []


def test_off_the_event_loop_a_reader_sees_an_edit_at_once(toml: Path) -> None:
    """The CLI, and worker threads: no watch there, they look at the file on every read."""
    toml.write_text('[aliases]\nmine = "org/one:Q8_0"\n')
    assert model_refs.parse("mine").repo == "org/one"
    toml.write_text('[aliases]\nmine = "org/two-longer:Q8_0"\n')
    assert model_refs.parse("mine").repo == "org/two-longer"


def test_unreadable_file_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("not = [toml")
    with pytest.raises(UnreadableFile, match=rf"^cannot read {path}: "):
        ModelsFile(lambda: path).parsed()
