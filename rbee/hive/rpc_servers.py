"""The devices a hive lends to spreads across hives: one `ggml-rpc-server` per spread, serving each device
the spread takes here (`-d CUDA0,CUDA1`).

    POST   /v1/hive/rpc-servers           RpcServerOpen -> RpcServerInfo (its port on 127.0.0.1)
    DELETE /v1/hive/rpc-servers/{spread}  stop that spread's rpc-servers -> list[RpcServerInfo]

llama.cpp's rpc-server has no authentication (its docs: never expose it), so it listens on 127.0.0.1 only;
the spread's listen channel end (rbee/hive/rpc_channel.py) is the one way in from the LAN, and accepts it as
a target because this hive started it. `-c` keeps the tensors it received in its local cache (LLAMA_CACHE,
here under the hive's state folder, "rpc/"): the next load of the same weights sends only their hashes.
ggml's RPC client hashes tensors over 10 MiB only (ggml-rpc.cpp HASH_THRESHOLD), so smaller ones are sent
each time. rpc-server cannot read tensors from a GGUF file of its own (llama.cpp 0.3.36, tools/rpc): the
cache is how it avoids a second transfer.

Why one process for all of a hive's devices, not one per device: llama.cpp 0.3.36's rpc-server serves several
devices (ggml-rpc.cpp, RPC_CMD_DEVICE_COUNT; llama-server lists them as RPCn, RPCn+1, ... in `-d` order), and a
tensor copied between two devices of one rpc-server stays on that machine (`ggml_backend_rpc_buffer_cpy_tensor`
sends RPC_CMD_COPY_TENSOR when both are behind one connection), where two rpc-servers would move it through
the main hive, over the network twice. One process also needs one channel, one port and one cache.

Each one is watched as workers are (a process that exits is marked `error` with the end of its log), started
in its own process group that dies with the hive, and stopped with its spread. The memory the queen books for
it counts on each device it lends (`lent`), so the helper's own workers' accounting stays right.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

from rbee.common import settings
from rbee.common.logs import tail
from rbee.contracts.spreads import RpcServerInfo, RpcServerOpen
from rbee.hive import devices
from rbee.hive.worker import _die_with_parent, _open_log, free_port, poll_gap_s, terminate

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
MAX_RPC_SERVERS = 16


class RpcRefused(ValueError):
    """An rpc-server this hive will not (or cannot) start; `status` and `code` for the answer."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_rpc_server") -> None:
        super().__init__(message)
        self.status, self.code = status, code


class RpcServer:
    """One ggml-rpc-server process and its state."""

    def __init__(self, asked: RpcServerOpen, binary: Path, engine_devices: list[str], log_path: Path) -> None:
        self.asked, self.binary, self.engine_devices, self.log_path = asked, binary, engine_devices, log_path
        self.port: int | None = None
        self.state: str = "starting"
        self.error: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None

    def info(self) -> RpcServerInfo:
        return RpcServerInfo(spread=self.asked.spread, devices=self.asked.devices, port=self.port,
                             pid=self._proc.pid if self._proc else None,
                             state=self.state, error=self.error)  # type: ignore[arg-type]

    def argv(self, port: int) -> list[str]:
        argv = [str(self.binary), "-H", "127.0.0.1", "-p", str(port), "-c"]
        threads = settings.worker_threads()
        argv += ["-t", str(threads)] if threads else []
        return argv + (["-d", ",".join(self.engine_devices)] if self.engine_devices else [])

    async def start(self, cache: Path) -> None:
        self.port = free_port("127.0.0.1")
        out = await asyncio.to_thread(_open_log, self.log_path)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv(self.port), env=devices.engine_env(LLAMA_CACHE=str(cache)),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            self._failed(f"could not run {self.binary}: {exc}")
            raise RpcRefused(self.error or "", 503, "rpc_server_failed") from exc
        finally:
            out.close()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"watch-rpc-{self.asked.spread}")
        try:
            await asyncio.wait_for(self._listening(), START_TIMEOUT_S)
        except TimeoutError:
            self._failed(f"{self.binary.name} did not listen within {START_TIMEOUT_S:g} s")
        if self.state != "ready":
            await self.stop()
            raise RpcRefused(await self._with_log(self.error or "it exited"), 503, "rpc_server_failed")

    async def _listening(self) -> None:
        assert self.port is not None
        started = time.monotonic()
        while self.state == "starting":
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(poll_gap_s(time.monotonic() - started))
                continue
            writer.close()  # rpc-server serves one client at a time and drops a silent one: no harm done
            self.state = "ready"

    async def _watch(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self.state in ("starting", "ready"):
            self._failed(await self._with_log(f"{self.binary.name} exited with code {code}"))

    async def ended(self) -> None:
        """Return once its process has exited and its state says so."""
        if self._watcher is not None:
            await asyncio.shield(self._watcher)

    def _failed(self, message: str) -> None:
        log.warning("rpc-server of spread %s failed: %s", self.asked.spread, message)
        self.state, self.error = "error", message

    async def _with_log(self, message: str) -> str:
        lines = await asyncio.to_thread(tail, self.log_path, 8)
        return message + (". Last lines of its log:\n" + "\n".join(lines) if lines else "")

    async def stop(self) -> None:
        proc = self._proc
        if self.state != "error":
            self.state = "stopped"
        if proc is not None:
            await terminate(proc)
        if self._watcher is not None:
            await asyncio.gather(self._watcher, return_exceptions=True)


class RpcServers:
    """A hive's rpc-servers, by spread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # logs here, the cache in folder/"cache"
        self._by_spread: dict[str, list[RpcServer]] = {}

    def infos(self) -> list[RpcServerInfo]:
        return [s.info() for servers in self._by_spread.values() for s in servers]

    def of(self, spread: str) -> list[RpcServer]:
        return list(self._by_spread.get(spread, []))

    def lent(self) -> dict[str, int]:
        """The memory booked on each device for the spreads it lends to (ready or starting)."""
        return booked(self.infos())

    async def start(self, asked: RpcServerOpen, binary: Path | None, engine_devices: list[str]) -> RpcServerInfo:
        """An rpc-server lending `asked.devices` (`engine_devices`: their names to the engine, in that order)."""
        if binary is None:
            raise RpcRefused("this hive has no ggml-rpc-server (`rbee hive install` or `rbee engine install "
                             "--force` builds it beside llama-server; RBEE_RPC_SERVER names one)", 503,
                             "no_rpc_server")
        if sum(len(v) for v in self._by_spread.values()) >= MAX_RPC_SERVERS:
            raise RpcRefused(f"this hive runs {MAX_RPC_SERVERS} rpc-servers already; stop a spread first", 429,
                             "too_many_rpc_servers")
        if self._by_spread.get(asked.spread):
            has = "+".join(d.device for s in self._by_spread[asked.spread] for d in s.asked.devices)
            raise RpcRefused(f"spread {asked.spread} has an rpc-server here already (lending {has}); one rpc-server "
                             "lends all of a spread's devices on a hive", 409, "rpc_server_exists")
        await asyncio.to_thread(self.folder.mkdir, 0o700, True, True)
        cache = self.folder / "cache"
        server = RpcServer(asked, binary, engine_devices, self.folder / f"{asked.spread}-{secrets.token_hex(3)}.log")
        self._by_spread.setdefault(asked.spread, []).append(server)
        try:
            await server.start(cache)
        except BaseException:
            self._drop(asked.spread, server)
            raise
        log.info("rpc-server for spread %s on %s: 127.0.0.1:%s", asked.spread,
                 "+".join(d.device for d in asked.devices), server.port)
        return server.info()

    def _drop(self, spread: str, server: RpcServer) -> None:
        servers = self._by_spread.get(spread, [])
        if server in servers:
            servers.remove(server)
        if not servers:
            self._by_spread.pop(spread, None)

    async def stop(self, spread: str) -> list[RpcServerInfo]:
        servers = self._by_spread.pop(spread, [])
        await asyncio.gather(*(s.stop() for s in servers))
        return [s.info() for s in servers]

    async def stop_all(self) -> None:
        for spread in list(self._by_spread):
            await self.stop(spread)


def booked(servers: list[RpcServerInfo]) -> dict[str, int]:
    """The memory `servers` book on each device they lend (those starting or ready: a stopped or failed one's
    is free again)."""
    held: dict[str, int] = {}
    for s in servers:
        for d in s.devices if s.state in ("starting", "ready") else []:
            held[d.device] = held.get(d.device, 0) + d.memory
    return held
