"""The wheel of rbee that `rbee hive install` ships: complete, and the same bytes for the same code."""

from __future__ import annotations

import zipfile
from pathlib import Path

from rbee import __version__
from rbee.keeper import wheelhouse


def test_the_wheel_is_complete_and_reproducible(tmp_path: Path) -> None:
    first = wheelhouse.build_rbee_wheel(tmp_path / "a").read_bytes()
    wheel = wheelhouse.build_rbee_wheel(tmp_path / "b")
    assert wheel.read_bytes() == first
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"rbee-{__version__}.dist-info"
        assert {"rbee/__init__.py", "rbee/hive/app.py", f"{info}/METADATA", f"{info}/RECORD"} <= names
        assert not any("__pycache__" in n for n in names)
        metadata = zf.read(f"{info}/METADATA").decode()
        assert "Requires-Dist: httptools" in metadata and "Requires-Dist: huggingface_hub" in metadata
        record = zf.read(f"{info}/RECORD").decode()
        assert all(name in record for name in names)
        assert "rbee = rbee.keeper.main:run" in zf.read(f"{info}/entry_points.txt").decode()


def test_dependencies_are_pinned_to_what_is_installed_here() -> None:
    pins = wheelhouse.pinned_dependencies(wheelhouse.Target.here())
    names = {p.split("==")[0] for p in pins}
    assert {"pydantic", "httptools", "huggingface-hub", "uvicorn"} <= names
    assert "pytest" not in names  # test extras stay out
    windows = wheelhouse.pinned_dependencies(wheelhouse.Target("3.11", "Windows", "AMD64"))
    assert "uvloop" in names and "uvloop" not in {p.split("==")[0] for p in windows}
