"""What `rbee hive install` makes of a machine's answers, before it changes anything there."""

from __future__ import annotations

import pytest

from rbee.keeper.hive_install import parse_probe
from rbee.keeper.hives_conf import HostConfig
from rbee.keeper.output import CLIError

HOST = HostConfig("gpu-box", hostname="10.0.0.7", user="me")
COMMON = ("os=Linux\narch=x86_64\nhome=/home/me\nconfig=/home/me/.config/rbee\ndata=/home/me/.local/share/rbee\n"
          "cache=/home/me/.cache/rbee\nconn=10.0.0.2 51234 10.0.0.7 22\n")


def test_the_first_recent_python_with_venv_is_chosen() -> None:
    remote = parse_probe(HOST, COMMON + "python=/usr/bin/python3.13 3.13 no\npython=/usr/bin/python3.11 3.11 yes\n"
                                        "python=/usr/bin/python3 3.11 yes\n")
    assert (remote.python, remote.python_version) == ("/usr/bin/python3.11", "3.11")
    assert (remote.queen_side_ip, remote.own_ip) == ("10.0.0.2", "10.0.0.7")
    assert remote.venv == "/home/me/.local/share/rbee/venv"


def test_a_python_without_venv_says_what_to_install() -> None:
    with pytest.raises(CLIError) as err:
        parse_probe(HOST, COMMON + "python=/usr/bin/python3 3.11 no\n")
    assert "sudo apt install python3-venv" in err.value.message and "gpu-box" in err.value.message


def test_an_old_or_missing_python_says_what_to_install() -> None:
    with pytest.raises(CLIError) as err:
        parse_probe(HOST, COMMON + "python=/usr/bin/python3 3.9 yes\n")
    assert "Python 3.11 or newer" in err.value.message and "/usr/bin/python3 (3.9)" in err.value.message
    with pytest.raises(CLIError) as err:
        parse_probe(HOST, COMMON)
    assert "no python3 at all" in err.value.message


def test_no_ssh_connection_variable_asks_for_the_queen_url() -> None:
    with pytest.raises(CLIError) as err:
        parse_probe(HOST, COMMON.replace("conn=10.0.0.2 51234 10.0.0.7 22", "conn=") + "python=/x 3.12 yes\n")
    assert "--queen-url" in err.value.message
