from __future__ import annotations

import time
from pathlib import Path

from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerMode
from rbee.hive.worker import WorkerSpec, build_argv, worker_env


def _spec(mode: WorkerMode, threads: int | None = None) -> WorkerSpec:
    model = ModelEntry(name="tiny", path="/models/tiny.gguf", size_bytes=1, added_at=time.time())
    return WorkerSpec(model=model, mode=mode, engine=Path("/bin/llama-server"), slots=4, context_per_slot=2048,
                      threads=threads)


def test_argv_for_generation() -> None:
    argv = build_argv(_spec(WorkerMode.GENERATE), 5555)
    assert argv[0] == "/bin/llama-server"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--model"] == "/models/tiny.gguf" and pairs["--alias"] == "tiny"
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "5555"
    assert pairs["--parallel"] == "4" and pairs["--ctx-size"] == str(4 * 2048)
    assert "--embeddings" not in argv and "--threads" not in argv


def test_argv_for_embeddings_and_threads() -> None:
    argv = build_argv(_spec(WorkerMode.EMBED, threads=1), 5555)
    assert argv[argv.index("--pooling") + 1] == "mean" and "--embeddings" in argv
    assert argv[argv.index("--threads") + 1] == "1"


def test_the_key_is_never_on_the_command_line() -> None:
    argv = build_argv(_spec(WorkerMode.GENERATE), 5555)
    assert not any("key" in part for part in argv)
    assert worker_env("s3cret")["LLAMA_API_KEY"] == "s3cret"
