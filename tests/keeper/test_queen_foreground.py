"""Which `rbee queen start` command lines the daemon's light path takes (the rest go to the typer app)."""

from __future__ import annotations

import pytest

from rbee.keeper import queen_foreground


@pytest.mark.parametrize(("argv", "expected"), [
    (["queen", "start", "--foreground", "--port", "7900"], ("127.0.0.1", 7900, False)),
    (["queen", "start", "--port=7901", "--foreground"], ("127.0.0.1", 7901, False)),
    (["queen", "start", "--foreground", "--host", "0.0.0.0", "--insecure-no-auth"], ("0.0.0.0", 7833, True)),
    (["queen", "start", "--foreground", "--host=::1", "--port", "0"], ("::1", 7833, False)),
])
def test_plain_daemon_command_lines_take_the_light_path(argv: list[str], expected: tuple[str, int, bool],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_QUEEN_PORT", raising=False)
    monkeypatch.delenv("RBEE_QUEEN_HOST", raising=False)
    assert queen_foreground.parse(argv) == expected


@pytest.mark.parametrize("argv", [
    ["queen", "start"],  # the background start: the CLI's
    ["queen", "start", "--foreground", "--help"],
    ["queen", "start", "--foreground", "--port", "abc"],
    ["queen", "start", "--foreground", "--port"],
    ["queen", "start", "--foreground", "--port="],
    ["queen", "start", "--foreground", "--port", "1", "--port", "2"],
    ["queen", "start", "--foreground", "--host", "--insecure-no-auth"],
    ["queen", "start", "--foreground", "--verbose"],
    ["queen", "start", "--foreground=yes"],
    ["queen", "stop"],
    ["status", "--foreground"],
    [],
])
def test_anything_else_goes_to_the_cli_and_its_messages(argv: list[str]) -> None:
    assert queen_foreground.parse(argv) is None
