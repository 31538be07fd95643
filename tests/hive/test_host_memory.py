"""host_memory: the machine's RAM from /proc/meminfo, the figures psutil gives, with psutil only as a fallback."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from rbee.hive import host_memory as host_memory_mod
from rbee.hive.host_memory import HostMemory, host_memory, parse_meminfo

MEMINFO = "MemTotal:       24683656 kB\nMemFree:        18561824 kB\nMemAvailable:   21203128 kB\nBuffers: 53740 kB\n"


def test_it_reads_total_and_available_in_bytes() -> None:
    assert parse_meminfo(MEMINFO) == HostMemory(total=24683656 * 1024, available=21203128 * 1024)


def test_a_text_without_mem_available_is_not_an_answer() -> None:  # kernels before 3.14
    assert parse_meminfo("MemTotal:       24683656 kB\nMemFree:        18561824 kB\n") is None


def test_this_machines_figures_are_psutils() -> None:
    ours, theirs = host_memory(), psutil.virtual_memory()
    assert ours.total == theirs.total
    assert abs(ours.available - theirs.available) < 256 * 2**20  # read a moment apart


@pytest.mark.parametrize("text", [None, "MemTotal: 1 kB\n", "garbled\n"])
def test_without_a_readable_meminfo_psutil_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   text: str | None) -> None:
    meminfo = tmp_path / "meminfo"
    if text is not None:
        meminfo.write_text(text)
    monkeypatch.setattr(host_memory_mod, "MEMINFO", meminfo)
    assert host_memory().total == psutil.virtual_memory().total
