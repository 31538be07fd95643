"""State files are their owner's only: folders 700, files 600, tightened when found looser."""

from __future__ import annotations

import stat
from pathlib import Path

from rbee.common import paths


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_folders_are_made_and_tightened(tmp_path: Path) -> None:
    made = paths.private_dir(tmp_path / "a" / "state")
    assert _mode(made) == 0o700
    made.chmod(0o755)
    assert _mode(paths.private_dir(made)) == 0o700


def test_logs_are_made_600_and_a_loose_one_is_tightened(tmp_path: Path) -> None:
    log = tmp_path / "state" / "queen.log"
    with paths.open_private(log) as out:
        out.write(b"one\n")
    assert _mode(log) == 0o600 and _mode(log.parent) == 0o700
    log.chmod(0o644)
    with paths.open_private(log) as out:
        out.write(b"two\n")
    assert _mode(log) == 0o600 and log.read_bytes() == b"one\ntwo\n"
    with paths.open_private(log, "wb") as out:
        out.write(b"new\n")
    assert log.read_bytes() == b"new\n"


def test_databases_and_their_journals_are_600(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    wal = tmp_path / "catalog.sqlite-wal"
    db.write_bytes(b"")
    wal.write_bytes(b"")
    db.chmod(0o644)
    wal.chmod(0o644)
    paths.touch_private(db)
    assert _mode(db) == 0o600 and _mode(wal) == 0o600
    fresh = paths.touch_private(tmp_path / "new" / "queen.sqlite")
    assert fresh.exists() and _mode(fresh) == 0o600
