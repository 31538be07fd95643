"""Fixtures that start the real parts: llama-server (found or built by `rbee engine install`),
a queen process in its own RBEE_HOME on a free port, and the generated tiny model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.hive import engine
from rbee.hive.engine_sources import SD, WHISPER
from tests.fixtures.tiny_gguf import write_tiny_model
from tests.fixtures.tiny_sd import write_tiny_sd
from tests.fixtures.tiny_whisper import write_tiny_whisper

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.fixtures.browser", "tests.fixtures.other_user"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """The engine the suite runs: RBEE_LLAMA_SERVER, or the one `rbee engine install` built."""
    found = engine.locate()
    if found is None:
        pytest.fail("no llama-server: run `rbee engine install --local` (make test does) or set RBEE_LLAMA_SERVER")
    return found[0]


@pytest.fixture(scope="session")
def rpc_server() -> Path:
    """llama.cpp's RPC server that `rbee engine install` builds beside llama-server (or RBEE_RPC_SERVER)."""
    found = engine.rpc_server()
    if found is None:
        pytest.fail("no ggml-rpc-server: run `rbee engine install --local --force` (make test does) or set "
                    "RBEE_RPC_SERVER")
    return found


@pytest.fixture(scope="session")
def whisper_server() -> Path:
    """The speech engine the suite runs: RBEE_WHISPER_SERVER, or the one `rbee engine install --engine whisper`
    built."""
    found = engine.locate(WHISPER)
    if found is None:
        pytest.fail("no whisper-server: run `rbee engine install --local --engine whisper` (make test does) or set "
                    "RBEE_WHISPER_SERVER")
    return found[0]


@pytest.fixture(scope="session")
def sd_server() -> Path:
    """The image engine the suite runs: RBEE_SD_SERVER, or the one `rbee engine install --engine sd` built."""
    found = engine.locate(SD)
    if found is None:
        pytest.fail("no sd-server: run `rbee engine install --local --engine sd` (make test does) or set "
                    "RBEE_SD_SERVER")
    return found[0]


@pytest.fixture(scope="session")
def tiny_sd() -> Path:
    """A stable-diffusion.cpp image model (SDXS-512's shape) with seeded random weights: it draws noise, in a
    cache folder keyed by the generator's version, so the suite writes it at most once."""
    return write_tiny_sd()


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whisper.cpp ggml model with seeded weights that transcribes any audio as " rbee rbee ..."."""
    return write_tiny_whisper(tmp_path_factory.mktemp("models") / "ggml-tiny-test.bin")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs until max_tokens (EOS suppressed)."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_stop_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ends with finish_reason "stop" after a few tokens."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-stop.gguf", eos_bias=8.0, name="tiny-stop")


@pytest.fixture(scope="session")
def tiny_rerank_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a reranker (pooling rank), for `--reranking` workers."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-rerank.gguf", pooling="rank",
                            name="tiny-rerank")


@pytest.fixture(scope="session")
def tiny_fim_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with fill-in-the-middle tokens, for `/infill`."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-fim.gguf", fim=True, name="tiny-fim")


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> bool:
    """Poll `condition` until it holds or `seconds` pass; its last answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@dataclass
class Queen:
    """A queen process started by a test, and how to talk to it."""

    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home / "queen-test.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Queen:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"queen exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"queen did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> list[psutil.Process]:
        """Stop the queen; return the child processes (workers) that outlived it."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _, alive = psutil.wait_procs(children, timeout=5)
        for leftover in alive:
            leftover.kill()
        return alive

    def cli(self, *args: str, timeout: float = 120, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `rbee ARGS` against this queen."""
        result = subprocess.run([sys.executable, "-m", "rbee", *args], env={**self.env, **(env or {})},
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"rbee {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def workers(self) -> list[dict[str, object]]:
        return list(httpx.get(f"{self.url}/v1/workers", timeout=10).json())

    def waiting(self) -> int:
        """Requests queued for a worker, all models together (/v1/status)."""
        return sum(httpx.get(f"{self.url}/v1/status", timeout=10).json()["traffic"]["waiting"].values())

    def reaper_passes(self) -> int:
        """Passes of the keep_alive reaper so far (/v1/status)."""
        return int(httpx.get(f"{self.url}/v1/status", timeout=10).json()["background"]["reap-idle"]["passes"])

    def wait_reaper_passes(self, passes: int, seconds: float = 30) -> None:
        """Block until the reaper has run `passes` more passes: whatever keep_alive was going to unload by
        then is unloaded, so a test can assert that something was NOT, without sleeping and hoping."""
        target = self.reaper_passes() + passes
        assert wait_for(lambda: self.reaper_passes() >= target, seconds), "the keep_alive reaper stopped"


def queen_env(home: Path, port: int, llama_server: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    env.update(
        RBEE_HOME=str(home), RBEE_QUEEN_PORT=str(port), RBEE_LLAMA_SERVER=str(llama_server),
        RBEE_WORKER_THREADS="1", RBEE_WORKER_SLOTS="2", RBEE_WORKER_CONTEXT="512", PYTHONPATH=str(REPO),
        NO_COLOR="1", COLUMNS="200",
    )
    for src in (WHISPER, SD):
        found = engine.locate(src)
        if found is not None:
            env[src.env] = str(found[0])
    return env


@pytest.fixture
def make_queen(tmp_path: Path, llama_server: Path) -> Iterator[Callable[..., Queen]]:
    """Build (not start) queens in fresh homes; all are stopped at the end of the test."""
    made: list[Queen] = []

    def make(**extra_env: str) -> Queen:
        home = tmp_path / f"home{len(made)}"
        port = free_port()
        queen = Queen(home, port, {**queen_env(home, port, llama_server), **extra_env})
        made.append(queen)
        return queen

    yield make
    for queen in made:
        queen.stop()


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    """One running queen shared by a test module."""
    home = tmp_path_factory.mktemp("queen")
    port = free_port()
    q = Queen(home, port, queen_env(home, port, llama_server)).start()
    yield q
    assert not q.stop(), "workers outlived their queen"
