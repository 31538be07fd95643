"""hives.conf: ssh_config syntax, rbee keys, ~/.ssh/config fallback, and values refused before they reach ssh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbee.common import paths
from rbee.keeper.hives_conf import (
    DEFAULT_HIVE_PORT,
    HivesConfError,
    HostConfig,
    UnknownHost,
    known_aliases,
    load,
    lookup,
    ssh_config_aliases,
)


def _write(tmp_path: Path, text: str, name: str = "hives.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_absent_file_still_knows_localhost(tmp_path: Path) -> None:
    assert load(tmp_path / "missing.conf") == {"localhost": HostConfig("localhost", hostname="127.0.0.1")}


def test_path_comes_from_rbee_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_HIVES_CONF", raising=False)
    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    assert paths.hives_conf_file() == tmp_path / "config" / "hives.conf"
    (tmp_path / "config").mkdir()
    _write(tmp_path / "config", "Host h1\n  HostName 10.0.0.5\n")
    assert list(load()) == ["localhost", "h1"]
    monkeypatch.setenv("RBEE_HIVES_CONF", str(tmp_path / "elsewhere.conf"))
    assert paths.hives_conf_file() == tmp_path / "elsewhere.conf"
    assert list(load()) == ["localhost"]


def test_a_full_block_and_its_defaults(tmp_path: Path) -> None:
    conf = _write(tmp_path, """
# my hives
Host h1
    HostName 10.0.0.5
    User rbee-h1
    Port 2222
    HivePort 9000
    IdentityFile ~/.ssh/rbee_ed25519
    Backend cuda
    Devices 0,1
    ModelsDir /data/models
    WorkerThreads 2
    ServerAliveInterval 30

Host h2
    User me
""")
    hosts = load(conf)
    assert list(hosts) == ["localhost", "h1", "h2"]
    assert hosts["h1"] == HostConfig(
        "h1", hostname="10.0.0.5", user="rbee-h1", port=2222, hive_port=9000,
        identity_file=os.path.expanduser("~/.ssh/rbee_ed25519"), backend="cuda", devices="0,1",
        models_dir="/data/models", worker_threads=2, ssh_options=(("ServerAliveInterval", "30"),),
    )
    assert hosts["h1"].destination() == "10.0.0.5"
    h2 = hosts["h2"]
    assert (h2.hostname, h2.port, h2.hive_port, h2.source) == (None, None, DEFAULT_HIVE_PORT, "hives.conf")
    assert h2.destination() == "h2"


def test_several_aliases_on_one_host_line_share_the_block(tmp_path: Path) -> None:
    hosts = load(_write(tmp_path, "Host a b c\n  HostName %h.lan\n  User u\n"))
    assert [(h.alias, h.hostname, h.user) for h in hosts.values() if h.alias != "localhost"] == [
        ("a", "a.lan", "u"), ("b", "b.lan", "u"), ("c", "c.lan", "u")]


def test_wildcard_blocks_are_defaults_and_the_first_value_wins(tmp_path: Path) -> None:
    conf = _write(tmp_path, """
User everyone
Host gpu-*
    HivePort 7900
    Backend cuda
Host gpu-1 cpu-1
    Backend vulkan
Host * !cpu-1
    Devices all
Host *
    HivePort 7000
    User ignored
    Backend cpu
""")
    hosts = load(conf)
    assert list(hosts) == ["localhost", "gpu-1", "cpu-1"]  # patterns are not hives
    gpu, cpu = hosts["gpu-1"], hosts["cpu-1"]
    assert (gpu.user, gpu.hive_port, gpu.backend, gpu.devices) == ("everyone", 7900, "cuda", "all")
    assert (cpu.user, cpu.hive_port, cpu.backend, cpu.devices) == ("everyone", 7000, "vulkan", None)
    assert hosts["localhost"].hostname == "127.0.0.1" and hosts["localhost"].hive_port == 7000


def test_key_equals_value_case_insensitive_keywords_quotes_and_comments(tmp_path: Path) -> None:
    conf = _write(tmp_path, (
        "HOST h1  # trailing comment\r\n"
        "\thostname=10.0.0.7\n"
        "  USER = bob\n"
        "  hiveport   =7836\n"
        '  identityfile "/keys/my key"\n'
        "  modelsdir /m#not-a-comment\n"
        "\n"
        "   # indented comment\n"
    ))
    h1 = load(conf)["h1"]
    assert (h1.hostname, h1.user, h1.hive_port) == ("10.0.0.7", "bob", 7836)
    assert h1.identity_file == "/keys/my key"
    assert h1.models_dir == "/m#not-a-comment"


def test_other_keywords_pass_through_to_ssh_in_order(tmp_path: Path) -> None:
    conf = _write(tmp_path, """
Host h1
    ProxyJump bastion
    proxyjump ignored-second
    LocalForward 8080 localhost:80
Host *
    StrictHostKeyChecking accept-new
    LocalForward 9090 localhost:90
""")
    assert load(conf)["h1"].ssh_options == (
        ("ProxyJump", "bastion"),
        ("LocalForward", "8080 localhost:80"),
        ("StrictHostKeyChecking", "accept-new"),
        ("LocalForward", "9090 localhost:90"),
    )


def test_localhost_can_be_configured(tmp_path: Path) -> None:
    hosts = load(_write(tmp_path, "Host other\n  HostName o\nHost localhost\n  HivePort 7999\n"))
    assert list(hosts) == ["localhost", "other"]
    assert hosts["localhost"] == HostConfig("localhost", hostname="127.0.0.1", hive_port=7999)


def test_ssh_config_aliases_are_concrete_names_and_follow_include(tmp_path: Path) -> None:
    ssh_dir = tmp_path / ".ssh"
    (ssh_dir / "config.d").mkdir(parents=True)
    _write(ssh_dir / "config.d", "Host included\n  HostName i\n", name="work.conf")
    config = _write(ssh_dir, """
Host github.com gaming-pc *.lan !secret pc?
    User git
Include config.d/*.conf
Host gaming-pc "bad;name" -oops
Match host foo
    User x
""", name="config")
    assert ssh_config_aliases(config) == ["github.com", "gaming-pc", "included"]
    assert ssh_config_aliases(tmp_path / "absent") == []


def test_lookup_prefers_hives_conf_then_ssh_config(tmp_path: Path) -> None:
    conf = _write(tmp_path, "Host h1\n  HostName 10.0.0.5\n")
    ssh_config = _write(tmp_path, "Host h1 gaming-pc\n  HostName 10.9.9.9\n", name="ssh_config")
    assert lookup("h1", conf, ssh_config).hostname == "10.0.0.5"
    assert lookup("localhost", conf, ssh_config).source == "hives.conf"
    fallback = lookup("gaming-pc", conf, ssh_config)
    assert fallback == HostConfig("gaming-pc", source="~/.ssh/config")
    assert fallback.destination() == "gaming-pc"
    assert known_aliases(conf, ssh_config) == ["localhost", "h1", "gaming-pc"]


def test_unknown_alias_lists_the_known_ones_and_says_how_to_add_it(tmp_path: Path) -> None:
    conf = _write(tmp_path, "Host h1 h2\n  HostName x\nHost web-*\n  User w\n")
    ssh_config = _write(tmp_path, "Host gaming-pc\n", name="ssh_config")
    with pytest.raises(UnknownHost) as caught:
        lookup("nope", conf, ssh_config)
    message = str(caught.value)
    assert message.startswith(
        "No host 'nope' in hives.conf or ~/.ssh/config. Known: localhost, h1, h2, gaming-pc.")
    assert "Host nope" in message and str(conf) in message
    with pytest.raises(UnknownHost):
        lookup("web-1", conf, ssh_config)  # matching a pattern does not make a hive


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("Host h1\n  HivePort 99999\n", 2, "between 1 and 65535"),
        ("Host h1\n  HivePort 0\n", 2, "between 1 and 65535"),
        ("Host h1\n\n  Port ssh\n", 3, "port number"),
        ("Host h1\n  Port 22 23\n", 2, "takes one value"),
        ("Host h1\n  HostName\n", 2, "needs a value"),
        ("Host\n", 1, "at least one alias"),
        ("Host h1\n  = x\n", 2, "Keyword value"),
        ("Host h1\n  User 'unterminated\n", 2, "unterminated quote"),
        ("Match host x\n", 1, "not supported"),
        ("Include other.conf\n", 1, "not supported"),
        ("# ok\nHost -oProxyCommand=x\n", 2, "starts with '-'"),
        ("Host 'a b'\n", 1, "whitespace"),
        ("Host a;reboot\n", 1, "shell metacharacters: ;"),
        ("Host a$(id)\n", 1, "shell metacharacters"),
        ("Host root@h1\n", 1, "'@'"),
        ("Host !-x*\n", 1, "starts with '-'"),
        ("Host h1\n  HostName -oProxyCommand=touch\n", 2, "starts with '-'"),
        ("Host h1\n  HostName h`id`\n", 2, "shell metacharacters"),
        ("Host h1\n  HostName 'a b'\n", 2, "whitespace"),
        ("Host h1\n  User -l\n", 2, "starts with '-'"),
        ("Host h1\n  User 'me|you'\n", 2, "shell metacharacters: |"),
        ("Host h1\n  User bo\tb\n", 2, "takes one value"),
        ("Host h1\n  User 'bo\tb'\n", 2, "control character"),
        ("Host h1\n  ModelsDir /m\x1b[31m\n", 2, "control character"),
        ("Host h1\n  HostName a\rb\n", 2, "control character"),
        ("Host h1\n  Backend cuda\x00\n", 2, "control character"),
        ("Host h1\n  ServerAliveInterval 3\x85\n", 2, "control character"),
        ("Host h1\n  WorkerThreads 0\n", 2, "WorkerThreads must be a number of threads (1-1024), not '0'"),
        ("Host h1\n  WorkerThreads many\n", 2, "not 'many'"),
    ],
)
def test_bad_values_are_refused_naming_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    conf = _write(tmp_path, text)
    with pytest.raises(HivesConfError) as caught:
        load(conf)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{conf}, line {line}: ")
    assert words in str(caught.value)


def test_an_unreadable_file_is_a_hives_conf_error(tmp_path: Path) -> None:
    conf = tmp_path / "hives.conf"
    conf.write_bytes(b"Host \xff\n")
    with pytest.raises(HivesConfError, match="not UTF-8"):
        load(conf)
    with pytest.raises(HivesConfError, match="cannot read"):
        load(tmp_path)  # a directory
