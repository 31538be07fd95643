"""One worker's life: start, health, stop (also while starting), death, and what a dead hive leaves."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive import worker as worker_mod
from rbee.hive.worker import WorkerProcess, WorkerSpec, WorkerStartAborted, WorkerStartError, reap_orphans


def _engine(tmp_path: Path, body: str) -> Path:
    """A stand-in engine script (for the cases a real llama-server cannot be made to show on demand)."""
    path = tmp_path / "bin" / "llama-server"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _worker(tmp_path: Path, engine: Path, model: Path) -> WorkerProcess:
    entry = ModelEntry(name="tiny", path=str(model), size_bytes=1, added_at=time.time())
    spec = WorkerSpec(model=entry, mode=WorkerMode.GENERATE, engine=engine, slots=1, context_per_slot=256,
                      threads=1)
    return WorkerProcess("t-w1", "localhost", spec, tmp_path / "workers" / "t-w1.log")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_real_worker_starts_and_stops_twice(tmp_path: Path, llama_server: Path, tiny_model: Path) -> None:
    worker = _worker(tmp_path, llama_server, tiny_model)
    await worker.start()
    assert worker.state is WorkerState.READY and worker.pid and worker.pid_path.read_text() == str(worker.pid)
    pid = worker.pid
    await worker.stop()
    await worker.stop()
    assert worker.state is WorkerState.STOPPED and _gone(pid) and not worker.pid_path.exists()


async def test_stop_before_the_process_exists_aborts_the_start(tmp_path: Path, llama_server: Path,
                                                               tiny_model: Path) -> None:
    worker = _worker(tmp_path, llama_server, tiny_model)
    starting = asyncio.ensure_future(worker.start())
    await asyncio.sleep(0)  # start() is now between STARTING and spawning
    await worker.stop()
    with pytest.raises(WorkerStartAborted):
        await starting
    assert worker.state is WorkerState.STOPPED
    assert worker.pid is not None and _gone(worker.pid)


async def test_stop_while_waiting_for_health(tmp_path: Path, tiny_model: Path) -> None:
    worker = _worker(tmp_path, _engine(tmp_path, "exec sleep 60"), tiny_model)
    starting = asyncio.ensure_future(worker.start())
    while worker.pid is None:  # noqa: ASYNC110 - polling the worker's own field is the point
        await asyncio.sleep(0.01)
    await worker.stop()
    with pytest.raises(WorkerStartAborted):
        await starting
    assert worker.state is WorkerState.STOPPED and _gone(worker.pid)


# a stand-in engine on --port: the first connections get `answers` in turn ("hang": read, never answer), then 200
_HEALTH = """
import socket, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
server = socket.create_server(("127.0.0.1", port))
answers, held = sys.argv[1].split(","), []
while True:
    conn, _ = server.accept()
    conn.recv(65536)
    answer = answers.pop(0) if answers else "200"
    if answer == "hang":
        held.append(conn)
        continue
    body = b'{"status": "ok"}'
    conn.sendall(b"HTTP/1.1 " + answer.encode() + b" X\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    conn.close()
"""


def _health_engine(tmp_path: Path, answers: str) -> Path:
    script = tmp_path / "health.py"
    script.write_text(_HEALTH)
    return _engine(tmp_path, f'exec {sys.executable} {script} {answers} "$@"')


async def test_loading_answers_are_progress_and_the_first_200_makes_it_ready(tmp_path: Path,
                                                                            tiny_model: Path) -> None:
    worker = _worker(tmp_path, _health_engine(tmp_path, "503,503,503"), tiny_model)
    await worker.start()
    assert worker.state is WorkerState.READY
    await worker.stop()


async def test_a_health_poll_that_gets_no_answer_is_given_up_and_asked_again(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_mod, "HEALTH_POLL_S", 0.3)
    worker = _worker(tmp_path, _health_engine(tmp_path, "hang"), tiny_model)
    worker.start_timeout_s = 20  # far above one poll: only a poll that gives up reaches the 200 behind it
    await worker.start()
    assert worker.state is WorkerState.READY
    await worker.stop()


async def test_start_timeout_is_an_error_and_kills_the_process(tmp_path: Path, tiny_model: Path) -> None:
    worker = _worker(tmp_path, _engine(tmp_path, "echo loading forever; exec sleep 60"), tiny_model)
    worker.start_timeout_s = 0.5
    with pytest.raises(WorkerStartError, match=r"(?s)not healthy after 0.5 s.*loading forever"):
        await worker.start()
    assert worker.state is WorkerState.ERROR and worker.pid and _gone(worker.pid)


async def test_exit_during_start_quotes_the_log(tmp_path: Path, tiny_model: Path) -> None:
    worker = _worker(tmp_path, _engine(tmp_path, "echo 'error: unable to load model' >&2; exit 3"), tiny_model)
    with pytest.raises(WorkerStartError, match=r"(?s)exited with code 3.*unable to load model"):
        await worker.start()
    assert worker.state is WorkerState.ERROR


async def test_a_worker_that_dies_later_is_marked_error(tmp_path: Path, llama_server: Path,
                                                        tiny_model: Path) -> None:
    worker = _worker(tmp_path, llama_server, tiny_model)
    await worker.start()
    assert worker.pid
    os.kill(worker.pid, signal.SIGKILL)
    for _ in range(100):
        if worker.state is WorkerState.ERROR:
            break
        await asyncio.sleep(0.05)
    assert worker.state is WorkerState.ERROR and "exited with code -9" in str(worker.error)
    await worker.stop()
    assert worker.state is WorkerState.ERROR  # stop() leaves a terminal state alone


def test_orphans_of_a_dead_hive_are_reaped(tmp_path: Path) -> None:
    engine = _engine(tmp_path, "sleep 60 & wait")  # not a bare `sleep 60`: sh may exec it, and then no llama-server
    proc = subprocess.Popen([str(engine)], start_new_session=True)
    folder = tmp_path / "workers"
    folder.mkdir()
    (folder / "old-w1.pid").write_text(str(proc.pid))
    (folder / "old-w2.pid").write_text(str(os.getpid()))  # a reused pid: not a llama-server, left alone
    assert reap_orphans(folder) == [proc.pid]
    assert proc.wait(5) == -signal.SIGKILL
    assert not list(folder.glob("*.pid"))
