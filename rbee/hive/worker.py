"""One worker: a `llama-server` (or, for a speech model, `whisper-server`; for an image model, `sd-server`)
process serving one model.

The process is started in its own process group (so stopping it stops its children),
with its own random API key, on a free port of the hive's address. Readiness is a `/health`
poll; if the process exits first, the start fails at once, quoting the end of its log.
A watcher notices a worker that dies later and marks it `error` with the same evidence.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rbee.common import paths
from rbee.common.logs import tail
from rbee.common.tls import TLSFiles
from rbee.common.upstream import Answer, Upstream
from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerInfo, WorkerMode, WorkerState, check_transition, front_path, memory_held
from rbee.hive import devices

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0
BINARY_NAMES = ("llama-server", "whisper-server", "sd-server")
STOP_GRACE_S = 5.0
HEALTH_POLL_S = 2.0  # one poll of a starting engine's health route: connect, ask, read
POLL_GAP_S = (0.002, 0.05)  # between polls: a tenth of the time waited so far, within these bounds
MAX_HEALTH_BYTES = 64 * 1024


def poll_gap_s(waited_s: float) -> float:
    """How long a starting engine's poll (a worker's health, an rpc-server's port) waits before the next one,
    `waited_s` into the start: a tenth of that, within POLL_GAP_S. The tiny model's llama-server answers ~20 ms
    after its spawn, a large model's after seconds: a start is noticed within about a tenth of its length, and a
    long one is not asked 500 times a second."""
    low, high = POLL_GAP_S
    return min(high, max(low, waited_s / 10))


class WorkerStartError(RuntimeError):
    """The worker did not become healthy; the message carries the cause from its log."""


class WorkerStartAborted(WorkerStartError):
    """The worker was stopped while it was starting."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything that decides how a worker is started."""

    model: ModelEntry
    mode: WorkerMode
    engine: Path
    slots: int
    context_per_slot: int
    threads: int | None = None
    host: str = "127.0.0.1"
    tls: TLSFiles | None = None  # HTTPS with the hive's certificate (workers on a TLS hive, reached over the LAN)
    device: str = "cpu"  # the hive's id of the device it runs on ("cuda0+cuda1": spread over both)
    engine_device: str | None = None  # what llama-server's --device calls it ("CUDA0", "CUDA0,CUDA1"); None: CPU
    tensor_split: tuple[int, ...] = ()  # a spread worker's share of layers per device (their sizes in MiB)
    front: str | None = None  # the hive's API that serves this engine (rbee/hive/front.py); it listens on loopback
    slot_save_path: Path | None = None  # a text worker's folder for saved slots (rbee/hive/slot_cache.py)
    cache_ram_mib: int = 0  # a text worker's host-memory prompt cache (--cache-ram; 0: off, not llama-server's 8 GiB)
    gpu_layers: int | None = None  # layers on the GPUs when the rest are in RAM (device "cuda0+cpu"); None: all
    shares: tuple[int, ...] = ()  # bytes held on each part of `device` when planned so (offloaded)
    offload: str | None = None  # the split in words: "cuda0 24/33 layers + cpu 9/33"
    rpc: tuple[str, ...] = ()  # a spread across hives: its rpc-servers, reached at 127.0.0.1 (dial channel ends)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def whisper_argv(spec: WorkerSpec, port: int) -> list[str]:
    """The whisper-server command line for `spec` (a pure function): the model, its address (loopback: it takes
    no API key, so the hive serves it through its front beyond this machine), its threads, and its GPU or none."""
    argv = [str(spec.engine), "--model", spec.model.path, "--host", spec.host, "--port", str(port)]
    if spec.threads:
        argv += ["--threads", str(spec.threads)]
    gpu = "".join(c for c in (spec.engine_device or "") if c.isdigit())
    return argv + (["--device", gpu] if gpu else ["--no-gpu"])


def sd_argv(spec: WorkerSpec, port: int) -> list[str]:
    """The sd-server command line for `spec` (a pure function): the model, loopback only (it takes no API key
    either), its threads. Its CPU build drives no GPU; a GPU build uses its backend's first device."""
    argv = [str(spec.engine), "--model", spec.model.path, "--listen-ip", spec.host, "--listen-port", str(port)]
    return argv + (["--threads", str(spec.threads)] if spec.threads else [])


def health_path(mode: WorkerMode) -> str:
    """Where a started worker answers once its model is loaded: sd-server has no /health, but it listens only
    after loading, and answers `/` then."""
    return "/" if mode is WorkerMode.IMAGE else "/health"


def build_argv(spec: WorkerSpec, port: int) -> list[str]:
    """The engine's command line for `spec` (a pure function, tested on its own).

    The API key is not on it: command lines are visible to every local user, so the key
    travels in the environment (`worker_env`).
    """
    if spec.mode is WorkerMode.TRANSCRIBE:
        return whisper_argv(spec, port)
    if spec.mode is WorkerMode.IMAGE:
        return sd_argv(spec, port)
    argv = [
        str(spec.engine),
        "--model", spec.model.path,
        "--alias", spec.model.name,
        "--host", spec.host,
        "--port", str(port),
        "--parallel", str(spec.slots),
        "--ctx-size", str(spec.context_per_slot * spec.slots),
        "--metrics",
        "--no-webui",
    ]
    if spec.rpc:  # a spread's rpc-servers (devices RPC0.. first in llama-server's list): before --device names them
        argv += ["--rpc", ",".join(spec.rpc)]
    # Every layer on the GPU the scheduler chose (or spread over its GPUs by size), or none off the CPU.
    layers = "999" if spec.gpu_layers is None else str(spec.gpu_layers)  # the rest in RAM (offloaded)
    argv += ["--device", spec.engine_device, "--n-gpu-layers", layers] if spec.engine_device else \
        ["--device", "none", "--n-gpu-layers", "0"]
    if len(spec.tensor_split) > 1:
        argv += ["--split-mode", "layer", "--tensor-split", ",".join(map(str, spec.tensor_split))]
    if spec.threads:
        argv += ["--threads", str(spec.threads), "--threads-batch", str(spec.threads)]
    if spec.mode is WorkerMode.GENERATE:
        argv += ["--cache-ram", str(spec.cache_ram_mib)]
    if spec.mode is WorkerMode.GENERATE and spec.slot_save_path is not None:
        argv += ["--slot-save-path", str(spec.slot_save_path)]
    if spec.mode is WorkerMode.EMBED:
        argv += ["--embeddings", "--pooling", "mean"]
    elif spec.mode is WorkerMode.RERANK:
        argv += ["--reranking"]
    if spec.tls is not None:
        argv += ["--ssl-cert-file", str(spec.tls.cert), "--ssl-key-file", str(spec.tls.key)]
    return argv


def worker_env(api_key: str) -> dict[str, str]:
    return devices.engine_env(LLAMA_API_KEY=api_key)


class WorkerProcess:
    """A running (or starting, or dead) llama-server and its state."""

    tls: ssl.SSLContext | None = None  # how the queen checks it: None, the queen's own default (the cluster CA)

    def __init__(self, worker_id: str, hive: str, spec: WorkerSpec, log_path: Path) -> None:
        self.id = worker_id
        self.hive = hive
        self.spec = spec
        self.log_path = log_path
        self.api_key = secrets.token_urlsafe(24)
        self.port: int | None = None
        self.state = WorkerState.PENDING
        self.error: str | None = None
        self.started_at = time.time()
        self.memory = 0  # estimated bytes it holds (DESIGN.md decision 6); its load: the queen's (queen/loads.py)
        self.failed_at: float | None = None
        self.start_timeout_s = START_TIMEOUT_S
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._stop_lock = asyncio.Lock()

    @property
    def url(self) -> str | None:
        """Where the engine listens (what this hive uses: its health, its metrics)."""
        scheme = "https" if self.spec.tls else "http"
        return f"{scheme}://{self.spec.host}:{self.port}" if self.port else None

    @property
    def public_url(self) -> str | None:
        """Where the queen reaches it: the engine itself, or the hive's front for it."""
        if self.spec.front is None or self.port is None:
            return self.url
        return f"{self.spec.front}{front_path(self.id)}"

    @property
    def device(self) -> str:
        return self.spec.device

    def held(self) -> dict[str, int]:
        """The memory it holds on each of its devices."""
        return memory_held(self.spec.device, self.memory, self.spec.shares or self.spec.tensor_split)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def pid_path(self) -> Path:
        """Where the pid is recorded, so a hive that died uncleanly can reap its workers."""
        return self.log_path.with_suffix(".pid")

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id, model=self.spec.model.name, hive=self.hive, mode=self.spec.mode, state=self.state,
            url=self.public_url, pid=self.pid, slots=self.spec.slots, cache_ram_mib=self.spec.cache_ram_mib,
            context_size=self.spec.context_per_slot, started_at=self.started_at,
            error=self.error, memory_bytes=self.memory, device=self.spec.device, device_memory=self.held(),
            offload=self.spec.offload,
        )

    def _set(self, state: WorkerState, error: str | None = None) -> None:
        check_transition(self.state, state)
        log.info("worker %s (%s): %s -> %s", self.id, self.spec.model.name, self.state, state)
        self.state = state
        if error:
            self.error = error

    async def start(self) -> None:
        """Start llama-server and wait until `/health` answers.

        Raises `WorkerStartError` (with the cause from its log) when it cannot start, and
        `WorkerStartAborted` when `stop()` was called meanwhile; either way no process is left.
        """
        self._set(WorkerState.STARTING)
        self.port = free_port(self.spec.host)
        argv = build_argv(self.spec, self.port)
        log_file = await asyncio.to_thread(_open_log, self.log_path)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, env=worker_env(self.api_key), stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            self._fail(f"could not run {self.spec.engine}: {exc}")
            raise WorkerStartError(self.error or "") from exc
        finally:
            log_file.close()
        await asyncio.to_thread(self.pid_path.write_text, str(self._proc.pid))
        if self._stop_requested:
            await self._kill()
            raise WorkerStartAborted(f"worker {self.id} was stopped while starting")
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"watch-{self.id}")
        try:
            await asyncio.wait_for(self._wait_healthy(), self.start_timeout_s)
        except TimeoutError:
            self._fail(f"{self.spec.engine.name} was not healthy after {self.start_timeout_s:g} s")
            await self._kill()
            raise WorkerStartError(await self._with_log(self.error or "")) from None
        except asyncio.CancelledError:
            await self.stop()
            raise
        if self.state in (WorkerState.DRAINING, WorkerState.STOPPED):
            raise WorkerStartAborted(f"worker {self.id} was stopped while starting")
        if self.state is not WorkerState.STARTING:
            raise WorkerStartError(self.error or f"worker is {self.state}")
        self._set(WorkerState.READY)

    async def _wait_healthy(self) -> None:
        """Poll the engine's health route until it answers 200, each poll given HEALTH_POLL_S; with the hops' own
        client (rbee.common.upstream), so a queen that started a worker does without httpx (~5 MB)."""
        assert self.url is not None
        url, tls = f"{self.url}{health_path(self.spec.mode)}", self.spec.tls.client_context() if self.spec.tls else None
        client = Upstream(connect_s=HEALTH_POLL_S)
        started = time.monotonic()
        while self.state is WorkerState.STARTING:
            answer: Answer | None = None
            try:
                async with asyncio.timeout(HEALTH_POLL_S):
                    answer = await client.request("GET", url, tls=tls)
                    await answer.read(MAX_HEALTH_BYTES)
                if answer.status == 200:
                    return
            except OSError:  # not listening yet, closed mid-answer, no answer in time: poll again
                pass
            finally:
                if answer is not None:
                    answer.close()
            await asyncio.sleep(poll_gap_s(time.monotonic() - started))

    async def _watch(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self.state in (WorkerState.DRAINING, WorkerState.STOPPED, WorkerState.ERROR):
            return
        self._fail(await self._with_log(f"{self.spec.engine.name} exited with code {code}"))

    def _fail(self, message: str) -> None:
        log.warning("worker %s failed: %s", self.id, message)
        self.failed_at = time.monotonic()
        if self.state not in (WorkerState.ERROR, WorkerState.STOPPED):
            self._set(WorkerState.ERROR, message)

    async def _with_log(self, message: str) -> str:
        lines = await asyncio.to_thread(tail, self.log_path, 8)
        return message + (". Last lines of its log:\n" + "\n".join(lines) if lines else "")

    def begin_drain(self) -> None:
        """Take a ready worker out of rotation at once (it is about to be stopped)."""
        if self.state in (WorkerState.READY, WorkerState.UNREACHABLE):
            self._set(WorkerState.DRAINING)

    async def stop(self) -> None:
        """Stop serving: SIGTERM the process group, wait, then SIGKILL. Idempotent, and safe while starting."""
        async with self._stop_lock:
            self._stop_requested = True
            if self.state in (WorkerState.READY, WorkerState.STARTING, WorkerState.UNREACHABLE):
                self._set(WorkerState.DRAINING)
            await self._kill()
            if self.state in (WorkerState.DRAINING, WorkerState.PENDING):
                self._set(WorkerState.STOPPED)

    async def _kill(self) -> None:
        proc = self._proc
        if proc is not None:
            await terminate(proc)
            await asyncio.to_thread(self.pid_path.unlink, True)


def _open_log(path: Path) -> BinaryIO:
    # prompts can reach a worker's log: its folder is 700, the log 600; appended to, so that the hive can
    # empty it in place when it grows too large (rbee/common/logs.py bound_folder)
    return paths.open_private(path, "ab")


# Looked up once, in the parent: loading a library in the child of a threaded process (dlopen takes the
# loader's lock, which another thread may have held at fork time) can deadlock it before exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, die with the hive, however it dies (one system call, nothing
    that allocates or takes a lock).

    SIGKILL, not SIGTERM: with no hive left there is nobody to drain for, and llama-server answers a
    repeated SIGTERM by calling exit() inside its signal handler, which can deadlock (seen here).
    """
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def reap_orphans(folder: Path) -> list[int]:
    """Kill engines (llama-server, whisper-server) left running by a hive that died uncleanly (recorded in
    `*.pid`). Blocking."""
    import psutil

    killed = []
    for pid_file in folder.glob("*.pid"):
        try:
            proc = psutil.Process(int(pid_file.read_text().strip()))
            if any(Path(arg).name.startswith(BINARY_NAMES) for arg in proc.cmdline()[:2]):
                os.killpg(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
        except (ValueError, OSError, IndexError, psutil.Error):
            pass
        pid_file.unlink(missing_ok=True)
    return killed


async def terminate(proc: asyncio.subprocess.Process) -> None:
    """Stop an engine's process group: SIGTERM, then SIGKILL after STOP_GRACE_S; nothing if it has ended."""
    if proc.returncode is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
