"""What the end-to-end modules share: two real hosts on a LAN (netns + user + sshd, tests/fixtures/lan.py), one
pair per module that asks for `lan`; a module that needs another count (or set-up first) defines its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.lan import Lan, lan_hosts


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(2, tmp_path_factory.mktemp("lan")) as lan:
        yield lan
