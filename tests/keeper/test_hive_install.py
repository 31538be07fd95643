"""What `rbee hive install` makes of a machine's answers, before it changes anything there."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.keeper.hive_install import parse_probe
from rbee.keeper.hives_conf import HostConfig
from rbee.keeper.output import CLIError

HOST = HostConfig("gpu-box", hostname="10.0.0.7", user="me")
COMMON = ("os=Linux\narch=x86_64\nhome=/home/me\nconfig=/home/me/.config/rbee\ndata=/home/me/.local/share/rbee\n"
          "cache=/home/me/.cache/rbee\nconn=10.0.0.2 51234 10.0.0.7 22\n")
PROBE = COMMON + "python=/usr/bin/python3 3.11 yes\n"


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


def test_a_plain_http_queen_url_is_refused_once_tls_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rbee.keeper.hive_install import Installer
    from rbee.keeper.output import Output

    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    remote = parse_probe(HOST, PROBE)
    plain = Installer(HOST, None, Output(), queen_url="http://10.0.0.1:7833")  # type: ignore[arg-type]
    assert plain.queen_url_for(remote) == "http://10.0.0.1:7833"  # no TLS yet: plain HTTP is all there is
    monkeypatch.setenv("RBEE_TLS_CERT", str(tmp_path / "queen.pem"))
    with pytest.raises(CLIError, match="in clear"):
        plain.queen_url_for(remote)
    assert Installer(HOST, None, Output(), queen_url="https://10.0.0.1:7833").queen_url_for(  # type: ignore[arg-type]
        remote) == "https://10.0.0.1:7833"


def test_the_cli_never_sends_the_admin_token_in_clear_to_another_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from rbee.keeper.client import QueenClient

    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    monkeypatch.delenv("RBEE_API_KEY", raising=False)
    token = tmp_path / "config" / "admin.token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("rbee-admin-secret\n")
    sent: list[httpx.Request] = []
    for url in ("http://10.231.0.1:7833", "http://queen.lan:7833"):
        client = QueenClient(url)
        client._http._transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200, json={}))
        with pytest.raises(CLIError, match="in clear"):
            client.get("/v1/status")
    assert sent == []  # refused before a byte left
    local = QueenClient("http://127.0.0.1:7833")
    local._http._transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200, json={}))
    local.get("/v1/status")
    assert sent[0].headers["authorization"] == "Bearer rbee-admin-secret"


async def test_the_queens_certificate_is_reissued_for_the_queen_url_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rbee.common import tls_ca
    from rbee.keeper.hive_install import Installer
    from rbee.keeper.output import Output

    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    tls_ca.ensure_ca()
    queen_pem = tls_ca.issue_queen_cert(["10.0.0.2"])
    shipped: dict[str, str] = {}

    class FakeSSH:
        async def put_text(self, text: str, path: str, mode: str = "0600") -> None:
            shipped[path] = text

    installer = Installer(HOST, None, Output(), queen_url="https://queen.lan:7833")  # type: ignore[arg-type]
    installer.ssh = FakeSSH()  # type: ignore[assignment]
    certificate, reissued = await installer.ship_certificates(parse_probe(HOST, PROBE))
    assert reissued and {"queen.lan", "10.0.0.2"} <= tls_ca.names_in(queen_pem)  # the old names stay
    assert certificate is not None and shipped["/home/me/.config/rbee/tls/hive.pem"] == certificate
    again, reissued = await installer.ship_certificates(parse_probe(HOST, PROBE))
    assert not reissued and again is not None


@pytest.mark.parametrize("fits", [None, "Darwin arm64 differs from here"])
async def test_a_speech_or_image_engine_that_does_not_go_is_named_with_how_to_build_it_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fits: str | None) -> None:
    from rbee.keeper.hive_install import Installer
    from rbee.keeper.output import Output

    monkeypatch.setenv("RBEE_ENGINES_DIR", str(tmp_path))  # nothing built here
    installer = Installer(HOST, None, Output())  # type: ignore[arg-type]
    installer.ssh = None  # type: ignore[assignment]  # nothing may be run there: nothing is copied
    await installer.install_keyless_engines(parse_probe(HOST, PROBE), fits)
    said = " ".join(capsys.readouterr().err.split())
    why = fits or "no local CPU build to copy"
    assert f"whisper-server (speech to text) not installed on gpu-box: {why}" in said
    assert "`rbee engine install --engine whisper -a gpu-box` builds it there" in said
    assert f"sd-server (text to image) not installed on gpu-box: {why}" in said
    assert "`rbee engine install --engine sd -a gpu-box` builds it there" in said
