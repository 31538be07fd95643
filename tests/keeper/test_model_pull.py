"""Which hives `rbee model pull -a ... / --all` names, checked before any job starts."""

from __future__ import annotations

from typing import Any

import pytest

from rbee.keeper.client import QueenClient
from rbee.keeper.model_pull import targets
from rbee.keeper.output import CLIError


class Queen:
    """Answers `GET /v1/hives` only; anything else would be a job started too early."""

    def __init__(self, hives: dict[str, str]) -> None:
        self.hives = hives

    def get(self, path: str) -> Any:
        assert path == "/v1/hives"
        return [{"alias": alias, "state": state} for alias, state in self.hives.items()]


FLEET = Queen({"h1": "ready", "h2": "ready", "h3": "unreachable", "h4": "enrolled"})


def _targets(hives: str | None, every: bool = False, queen: Queen = FLEET) -> list[str] | None:
    client: QueenClient = queen  # type: ignore[assignment]
    return targets(client, hives, every)


def test_no_hive_lets_the_queen_choose_one_or_several_are_kept_in_order() -> None:
    assert _targets(None) is None
    assert _targets("h2") == ["h2"]
    assert _targets("h2, h1,h2,") == ["h2", "h1"]


def test_all_means_every_ready_hive() -> None:
    assert _targets(None, every=True) == ["h1", "h2"]
    with pytest.raises(CLIError, match="no hive is ready"):
        _targets(None, every=True, queen=Queen({"h3": "unreachable"}))


def test_bad_targets_are_refused_naming_the_known_hives() -> None:
    with pytest.raises(CLIError, match=r"There is no hive 'nope', 'gone'\. Known hives: h1, h2, h3, h4; nothing"):
        _targets("h1,nope,gone")
    with pytest.raises(CLIError, match="not both"):
        _targets("h1", every=True)
    with pytest.raises(CLIError, match="-a needs a hive alias"):
        _targets(" , ")
