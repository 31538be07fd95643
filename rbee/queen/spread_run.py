"""Carrying out a spread across hives (DESIGN.md decision 13): the plan (rbee/queen/spread_plan.py) made real.

For each helper, in the plan's `--rpc` order:
    (1) its rpc-server, on 127.0.0.1 of the helper, lending every device the plan takes there (in the plan's
        order: llama-server lists them as RPCn, RPCn+1, ...), booking each device's share of the need on it
        (POST /v1/hive/rpc-servers);
    (2) a key and a certificate per end (tls_ca.channel_pair: `cryptography`, imported only here), the
        channel's listen end on the helper (relaying to that rpc-server) and its dial end on the main hive
        (POST /v1/hive/channels), whose loopback port is what llama-server's `--rpc` names;
then (3) the main hive starts llama-server with `--rpc 127.0.0.1:P1,...`, the devices RPC0.. (each rpc-server's
in turn) then its own GPUs,
`--tensor-split` from the plan and `-ngl` leaving `main_cpu_share` of the layers on its CPU.

Any step that fails undoes the ones before it. A running spread is watched (`check`, a pass of the queen's
supervised "spreads" loop): when its worker fails or stops, a helper hive is no longer ready, or a helper's
rpc-server failed, the worker is marked `error` with the reason (unless it stopped on request) and every
process of the spread is stopped everywhere, so the next request is placed again from scratch. When
llama-server failed on its own, the reason names what it could not see: a helper hive that no longer answers,
or a link whose channel end saw its LAN connection fail while both hives still answer the queen (a cut
between them; that link's measure is forgotten, so the next plan measures it again).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from rbee.common.jobs import JobFailed
from rbee.contracts.hives import HiveReport, HiveState
from rbee.contracts.models import ModelEntry
from rbee.contracts.spread_plans import SpreadPlan
from rbee.contracts.spreads import ChannelInfo, ChannelOpen, LentDevice, RpcServerInfo, RpcServerOpen, SpreadWorker
from rbee.contracts.workers import WorkerInfo, WorkerMode, WorkerPart, WorkerState
from rbee.hive.rpc_servers import RpcRefused
from rbee.hive.service import Hive
from rbee.hive.worker import WorkerStartError
from rbee.queen.hive_client import HiveCallFailed
from rbee.queen.hive_seam import AnyWorker, HiveSeam
from rbee.queen.remote_hive import RemoteHive
from rbee.queen.remote_workers import RemoteWorker

log = logging.getLogger(__name__)

_DONE = (WorkerState.STOPPED, WorkerState.ERROR)
SPREAD_CHECK_S = 0.5  # how often the queen looks at its spreads (a failed helper is noticed within this)


@dataclass
class SpreadRun:
    """One spread's processes: the rpc-servers' hives, the channel ends, and the worker once started."""

    id: str
    plan: SpreadPlan
    main: HiveSeam
    helpers: list[HiveSeam]
    lenders: list[HiveSeam] = field(default_factory=list)  # hives running an rpc-server of it
    channels: list[tuple[HiveSeam, str]] = field(default_factory=list)  # (hive, channel id)
    helper_of: dict[str, str] = field(default_factory=dict)  # channel id -> the helper hive it joins
    worker: AnyWorker | None = None


def describe(plan: SpreadPlan) -> str:
    """The split in words, shown with the worker: "h2:cpu 48% (rpc) + h1:cpu 52%"."""
    parts = [f"{d.hive}:{d.device} {d.share:.0%}{' (rpc)' if d.rpc else ''}" for d in plan.devices]
    return " + ".join(parts)[:200]


def parts(plan: SpreadPlan) -> list[WorkerPart]:
    """Every device of the spread, on any hive, with its share and the memory booked there for it."""
    return [WorkerPart(hive=d.hive, device=d.device, share=d.share, memory_bytes=int(plan.need * d.share))
            for d in plan.devices]


def gpu_layers(plan: SpreadPlan, block_count: int | None) -> int:
    """-ngl: every layer off the main hive's CPU but its share of the `block_count` repeating layers.

    llama.cpp counts the output layer as one more (block_count + 1 in all) and offloads the last ones first,
    the output layer first of all (src/llama-model.cpp, i_gpu_start): -ngl 1 would lend the helpers the
    output layer alone. So the CPU keeps its share of the repeating layers (at least one goes off it) and
    -ngl is the rest plus the output layer."""
    if plan.main_cpu_share <= 0 or not block_count:
        return 999
    kept = min(block_count - 1, round(block_count * plan.main_cpu_share))
    return block_count + 1 - kept


def _main_part(plan: SpreadPlan, entry: ModelEntry, lent: list[tuple[str, int]]) -> SpreadWorker:
    """(3) llama-server's part: `lent` is each helper's (endpoint on the main hive, how many devices it lends)."""
    block_count = (entry.header or {}).get("block_count")
    return SpreadWorker(
        rpc=[endpoint for endpoint, _ in lent], rpc_devices=[count for _, count in lent],
        tensor_split=plan.tensor_split, gpu_layers=gpu_layers(plan, block_count if isinstance(block_count, int)
                                                              else None),
        gpus=[d.device for d in plan.devices if d.hive == plan.main and d.order is not None],
        describe=describe(plan))


def _held_on(plan: SpreadPlan, hive: str) -> float:
    return sum(d.share for d in plan.devices if d.hive == hive)


class Spreads:
    """The spreads the queen runs, by worker id once started."""

    def __init__(self, hives: Mapping[str, HiveSeam], forget_link: Callable[[str, str], None] | None = None) -> None:
        self._hives = hives
        self._forget_link = forget_link  # a link that broke under a spread is measured again before the next one
        self.runs: dict[str, SpreadRun] = {}

    def run_of(self, worker_id: str) -> SpreadRun | None:
        return self.runs.get(worker_id)

    def shown(self, info: WorkerInfo) -> WorkerInfo:
        """A worker as status shows it: a spread's with its `parts`, under every device it uses."""
        run = self.runs.get(info.id)
        return info if run is None else info.model_copy(update={"parts": parts(run.plan)})

    def parts_by_worker(self) -> dict[str, list[WorkerPart]]:
        """Each running spread's devices, by its worker's id (for /metrics)."""
        return {worker_id: parts(run.plan) for worker_id, run in self.runs.items()}

    async def start(self, plan: SpreadPlan, entry: ModelEntry) -> AnyWorker:
        """The plan carried out: its worker, ready; `JobFailed` saying which step failed (all undone)."""
        if not plan.spread or plan.main is None:
            raise JobFailed(plan.reason)
        missing = [h for h in [plan.main, *plan.helpers] if h not in self._hives]
        if missing:
            raise JobFailed(f"hive {', '.join(missing)} of the spread is gone")
        run = SpreadRun(id=f"spread-{secrets.token_hex(6)}", plan=plan, main=self._hives[plan.main],
                        helpers=[self._hives[h] for h in plan.helpers])
        try:
            lent = [await self._lend(run, helper) for helper in run.helpers]
            memory = int(plan.need * _held_on(plan, plan.main))
            run.worker = await run.main.spawn_worker(entry, WorkerMode.GENERATE, memory=memory,
                                                     spread=_main_part(plan, entry, lent))
        except (JobFailed, RpcRefused, WorkerStartError) as exc:
            await self._undo(run)
            raise JobFailed(f"the spread of {entry.name} over {', '.join([plan.main, *plan.helpers])} did not "
                            f"start: {exc}") from exc
        except BaseException:
            await self._undo(run)
            raise
        self.runs[run.worker.id] = run
        log.info("spread %s: %s serves %s over %s", run.id, run.worker.id, entry.name, describe(plan))
        return run.worker

    async def _lend(self, run: SpreadRun, helper: HiveSeam) -> tuple[str, int]:
        """(1) and (2) for one helper: the endpoint llama-server reaches its rpc-server at, on the main hive, and
        how many devices it lends."""
        from rbee.common.tls_ca import channel_pair  # `cryptography`: only a queen that spreads needs it

        devices = [LentDevice(device=d.device, memory=int(run.plan.need * d.share))
                   for d in run.plan.devices if d.hive == helper.alias]
        if not devices:
            raise JobFailed(f"the plan takes no device of helper hive '{helper.alias}'")
        run.lenders.append(helper)
        lent = await helper.start_rpc_server(RpcServerOpen(spread=run.id, devices=devices))
        assert lent.port is not None
        listen_cert, listen_key = await asyncio.to_thread(channel_pair, run.id, "listen")
        dial_cert, dial_key = await asyncio.to_thread(channel_pair, run.id, "dial")
        listen = await helper.open_channel(ChannelOpen(
            role="listen", spread=run.id, certificate=listen_cert.decode(), key=listen_key.decode(),  # type: ignore[arg-type]
            peer_certificate=dial_cert.decode(), peer_address=run.main.address, target_port=lent.port))
        run.channels.append((helper, listen.channel_id))
        run.helper_of[listen.channel_id] = helper.alias
        dial = await run.main.open_channel(ChannelOpen(
            role="dial", spread=run.id, certificate=dial_cert.decode(), key=dial_key.decode(),  # type: ignore[arg-type]
            peer_certificate=listen_cert.decode(), peer_address=helper.address, peer_port=listen.port))
        run.channels.append((run.main, dial.channel_id))
        run.helper_of[dial.channel_id] = helper.alias
        return f"127.0.0.1:{dial.port}", len(devices)

    async def _undo(self, run: SpreadRun) -> None:
        """Stop the spread's channel ends and rpc-servers, wherever they are (a hive that is gone: logged)."""
        for hive, channel_id in reversed(run.channels):
            await self._quietly(f"close channel {channel_id} on {hive.alias}", hive.close_channel(channel_id))
        for hive in run.lenders:
            await self._quietly(f"stop spread {run.id}'s rpc-servers on {hive.alias}", hive.stop_rpc_servers(run.id))
        run.channels, run.lenders = [], []

    @staticmethod
    async def _quietly(what: str, call: object) -> None:
        try:
            await asyncio.wait_for(call, 15)  # type: ignore[arg-type]
        except (JobFailed, TimeoutError, OSError) as exc:
            log.warning("could not %s: %s", what, exc)

    def _problem(self, run: SpreadRun) -> str | None:
        """Why the spread cannot go on, or None."""
        assert run.worker is not None
        if run.worker.state in _DONE:
            return run.worker.error or f"its worker {run.worker.id} is {run.worker.state}"
        for helper in run.helpers:
            if self._hives.get(helper.alias) is not helper or helper.state is not HiveState.READY:
                return f"helper hive '{helper.alias}' of spread {run.id} is {helper.state}"
            failed = [s for s in _rpc_servers(helper) if s.spread == run.id and s.state == "error"]
            if failed:
                return f"the rpc-server on helper hive '{helper.alias}' failed: {failed[0].error or 'it exited'}"
        return None

    async def check(self) -> None:
        """One pass of the watch: each spread that cannot go on is ended everywhere."""
        for worker_id, run in list(self.runs.items()):
            problem = self._problem(run)
            if problem is None:
                continue
            self.runs.pop(worker_id, None)
            worker = run.worker
            if worker is not None and worker.state is WorkerState.ERROR:  # llama-server failed on its own
                why = await self._helpers_gone(run) or await self._links_broken(run)
                if why:
                    worker.error = f"spread across hives ended: {why}; {worker.error or ''}"[:4000]
            await self.end(run, problem)

    async def _helpers_gone(self, run: SpreadRun) -> str | None:
        """Which helpers no longer answer (asked now: a dead hive's heartbeats stop only after the timeout)."""
        gone = []
        for helper in run.helpers:
            try:
                await _channels_now(helper)
            except HiveCallFailed as exc:
                if exc.status is not None:  # it answered, with an error: there
                    continue
                gone.append(f"helper hive '{helper.alias}' does not answer ({exc})")
                if isinstance(helper, RemoteHive):
                    helper.not_answering(f"it left spread {run.id} ({exc})")  # not planned into the next one
        return "; ".join(gone) or None

    async def _links_broken(self, run: SpreadRun) -> str | None:
        """Which of the spread's links broke while both hives still answer the queen (a cut between them): a
        channel end that saw a LAN-side connection fail, asked now on every hive of the spread."""
        broken: dict[str, str] = {}
        for hive in [run.main, *run.helpers]:
            try:
                ends = await _channels_now(hive)
            except HiveCallFailed:
                continue
            for end in ends:
                helper = run.helper_of.get(end.channel_id)
                if helper is not None and end.broken and helper not in broken:
                    broken[helper] = f"{hive.alias}: {end.broken}"
        for helper in broken:
            if self._forget_link is not None:
                self._forget_link(run.main.alias, helper)
        return "; ".join(f"the RPC link between main hive '{run.main.alias}' and helper hive '{helper}' broke "
                         f"({said}) while both hives still answer the queen: the network between them was cut or "
                         "blocks the spread's channel port" for helper, said in broken.items()) or None

    async def end(self, run: SpreadRun, reason: str) -> None:
        """The worker marked `error` with `reason` (unless it stopped on request), then every process stopped."""
        worker = run.worker
        if worker is not None and worker.state not in _DONE:
            log.warning("spread %s ends: %s", run.id, reason)
            _fail(worker, f"spread across hives ended: {reason}")
            await self._quietly(f"stop {worker.id} on {run.main.alias}", _stop_process(run.main, worker))
        await self._undo(run)

    async def close(self) -> None:
        for worker_id, run in list(self.runs.items()):
            self.runs.pop(worker_id, None)
            await self._undo(run)


def _fail(worker: AnyWorker, message: str) -> None:
    if isinstance(worker, RemoteWorker):
        worker.fail(message)
    else:
        worker._fail(message)


async def _stop_process(hive: HiveSeam, worker: AnyWorker) -> None:
    """Stop the process of a worker already marked failed, keeping its record (the reason stays listed)."""
    await hive.supervisor.stop(worker.id)
    hive.supervisor.keep(worker)


async def _channels_now(hive: HiveSeam) -> list[ChannelInfo]:
    """A hive's channel ends as it says now (a remote hive: its report, asked; HiveCallFailed if it cannot)."""
    if isinstance(hive, RemoteHive):
        raw = await hive.client.call("GET", "/v1/hive/report", wait_s=3)
        try:
            return list(HiveReport.model_validate_json(raw).channels)
        except ValidationError:
            return []
    return hive.channels.infos() if isinstance(hive, Hive) else []


def _rpc_servers(hive: HiveSeam) -> list[RpcServerInfo]:
    if isinstance(hive, RemoteHive):
        return list(hive.report.rpc_servers)
    return hive.rpc_servers.infos() if isinstance(hive, Hive) else []
