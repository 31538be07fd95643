from __future__ import annotations

from rbee.common.version import parse


def test_versions_compare_numerically() -> None:
    assert parse("0.10.0") > parse("0.9.9")
    assert parse("1.0.0rc1") == (1, 0, 0)
    assert parse("0.0.1") < parse("0.1.0")
