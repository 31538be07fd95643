"""A daemon's log is bounded: long messages are cut, and a log file past RBEE_LOG_MAX_MB is rotated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

FLOOD = """
import logging
from rbee.common import logs
logs.setup()
log = logging.getLogger("flood")
for i in range(400):
    log.warning("report %d from a hostile hive: %s", i, "x" * 20_000)
print("stdout still lands in the log")
"""


def test_a_flood_of_huge_messages_leaves_a_bounded_rotated_log(tmp_path: Path) -> None:
    log = tmp_path / "queen.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RBEE_LOG_MAX_MB": "1"}
    with log.open("ab") as out:  # as the keeper starts a background queen
        subprocess.run([sys.executable, "-c", FLOOD], stdout=out, stderr=subprocess.STDOUT, env=env, check=True,
                       timeout=60)
    rotated = log.with_name("queen.log.1")
    assert rotated.is_file(), "the log was never rotated"
    # 400 messages of 8 KiB after cutting (3.2 MB written): each file stays near the 1 MiB bound
    assert log.stat().st_size < 2**20 + 64 * 8500 and rotated.stat().st_size < 2**20 + 64 * 8500
    lines = log.read_text().splitlines()
    assert max(len(line) for line in lines) < 8300 and lines[0].endswith("… (20032 characters)")
    assert lines[-1] == "stdout still lands in the log"
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_workers_logs_are_emptied_in_place_past_the_bound_and_old_ones_pruned(tmp_path: Path) -> None:
    from rbee.common import logs

    folder = tmp_path / "workers"
    folder.mkdir()
    live = folder / "h1-w9.log"
    with live.open("ab") as writer:  # as llama-server holds its log: open, appending
        writer.write(b"x" * 3_000_000)
        writer.flush()
        logs.bound_folder(folder, max_bytes=2**20)
        writer.write(b"after\n")
    assert (folder / "h1-w9.log.1").stat().st_size == 3_000_000
    assert live.read_bytes() == b"after\n"  # it goes on at the new end: no hole where the old text was
    for i in range(5):
        old = folder / f"h1-w{i}.log"
        old.write_text("old\n")
        os.utime(old, (1000 + i, 1000 + i))
    logs.bound_folder(folder, max_bytes=2**20, keep=4)
    assert sorted(p.name for p in folder.glob("*.log")) == ["h1-w2.log", "h1-w3.log", "h1-w4.log", "h1-w9.log"]
