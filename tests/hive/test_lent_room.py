"""A hive lending a device to a spread across hives (rbee/hive/rpc_servers.py) places its own workers as if that
memory were taken (rbee/hive/machine.py devices_unlent, rbee/hive/worker_placement.py devices_for), as the
queen's views count it."""

from __future__ import annotations

from pathlib import Path

from rbee.contracts.hives import DeviceInfo
from rbee.contracts.spreads import LentDevice, RpcServerOpen
from rbee.hive.rpc_servers import RpcServer
from rbee.hive.service import Hive

GIB = 2**30


def _gpu(n: int, free: int | None) -> DeviceInfo:
    return DeviceInfo(id=f"cuda{n}", name="card", backend="cuda", engine_name=f"CUDA{n}", total_bytes=8 * GIB,
                      free_bytes=free)


def _hive(tmp_path: Path, free: int | None) -> Hive:
    hive = Hive("unit", state=tmp_path / "state")
    cpu = hive.devices()[0]
    hive._devices = [_gpu(0, free), _gpu(1, free), cpu]  # as refresh_devices would find two GPUs
    hive.engine_for = {"cuda0": Path("/engine"), "cuda1": Path("/engine")}
    return hive


def _lend(hive: Hive, device: str, memory: int, spread: str = "spread-1", **more: int) -> None:
    """A booking as POST /v1/hive/rpc-servers makes one (lending `device`, and each of `more` with its memory),
    before its process holds any memory."""
    asked = RpcServerOpen(spread=spread, devices=[LentDevice(device=device, memory=memory),
                                                  *(LentDevice(device=d, memory=m) for d, m in more.items())])
    hive.rpc_servers._by_spread.setdefault(asked.spread, []).append(
        RpcServer(asked, Path("/rpc-server"), [], hive.rpc_servers.folder / "log"))


def test_memory_lent_to_an_rpc_server_is_not_room_for_the_hives_own_workers(tmp_path: Path) -> None:
    hive = _hive(tmp_path, free=7 * GIB)
    assert [d.id for d in hive.devices_for(None, 6 * GIB)] == ["cuda0"]
    _lend(hive, "cuda0", 5 * GIB)
    assert hive.lent() == {"cuda0": 5 * GIB}
    assert {d.id: d.free_bytes for d in hive.devices_unlent()}["cuda0"] == 3 * GIB  # 8 total - 5 lent < 7 free
    assert [d.id for d in hive.devices_for(None, 6 * GIB)] == ["cuda1"]  # not the lent GPU
    _lend(hive, "cuda1", 5 * GIB, spread="spread-2")
    assert [d.id for d in hive.devices_for(None, 6 * GIB)] == ["cpu"]  # neither, nor both together (3 + 3 < 6)


def test_one_rpc_server_lending_two_gpus_books_each_its_own_share(tmp_path: Path) -> None:
    hive = _hive(tmp_path, free=7 * GIB)
    _lend(hive, "cuda0", 5 * GIB, cuda1=2 * GIB)
    assert hive.lent() == {"cuda0": 5 * GIB, "cuda1": 2 * GIB}
    assert {d.id: d.free_bytes for d in hive.devices_unlent()}["cuda1"] == 6 * GIB  # 8 total - 2 lent < 7 free
    assert [d.id for d in hive.devices_for(None, 6 * GIB)] == ["cuda1"]
    (server,) = hive.rpc_servers.of("spread-1")
    server.state = "error"  # its process exited: what it booked is free again, on both
    assert hive.lent() == {}


def test_a_gpu_that_reports_no_free_memory_counts_its_total_less_what_is_lent(tmp_path: Path) -> None:
    hive = _hive(tmp_path, free=None)
    _lend(hive, "cuda0", 7 * GIB)
    assert {d.id: d.free_bytes for d in hive.devices_unlent()} == {"cuda0": 1 * GIB, "cuda1": None,
                                                                  "cpu": hive.devices()[2].free_bytes}
    assert [d.id for d in hive.devices_for(None, 2 * GIB)] == ["cuda1"]
    assert hive.devices()[0].free_bytes is None  # what the hive reports is unchanged
