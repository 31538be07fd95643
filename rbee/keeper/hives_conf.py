"""The keeper's list of remote hives: `~/.config/rbee/hives.conf`, in ssh_config syntax.

    Host gaming-pc workstation         # several aliases share one block
        HostName 192.168.1.20
        User rbee
        Port 22                        # SSH port
        HivePort 7835                  # where that hive listens (rbee key)
        IdentityFile ~/.ssh/id_ed25519
        Backend cuda                   # rbee keys: Backend, Devices, ModelsDir
        ServerAliveInterval 30         # any other ssh_config keyword is passed to ssh as -o Key=Value

    Host *                             # patterns are not hives; their settings are defaults, the ssh way
        User rbee

An alias that is not in hives.conf but is a `Host` in `~/.ssh/config` is a hive too, reached with whatever
ssh itself knows about it. `localhost` is always a hive.

Errors:
    HivesConfError (ValueError)   the file is wrong: names the file, the line and what is wrong
    UnknownHost (LookupError)     the alias is in neither file; lists the known ones

Safety: the keeper never runs a shell; every value goes to `ssh` as its own argv item. But `ssh host COMMAND`
runs COMMAND through the *remote* login shell, so a caller that interpolates a value (ModelsDir, Devices, a
path) into a remote command must quote it with `shlex.quote`. The checks below are a second line of defence:
aliases, host names and users that start with "-" or contain whitespace or shell metacharacters are refused,
and no value may contain control characters or newlines.
"""

from __future__ import annotations

import glob
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rbee.common import paths

__all__ = [
    "DEFAULT_HIVE_PORT",
    "HivesConfError",
    "HostConfig",
    "UnknownHost",
    "known_aliases",
    "load",
    "lookup",
    "ssh_config_aliases",
]

DEFAULT_HIVE_PORT = 7835
LOCALHOST = "localhost"
HIVES_CONF_SOURCE = "hives.conf"
SSH_CONFIG_SOURCE = "~/.ssh/config"


@dataclass(frozen=True)
class HostConfig:
    """One hive's machine: how to reach it over SSH and the rbee settings for it."""

    alias: str
    hostname: str | None = None  # None: ssh resolves the alias itself (~/.ssh/config, DNS)
    user: str | None = None
    port: int | None = None  # SSH port
    identity_file: str | None = None  # ~ expanded
    hive_port: int = DEFAULT_HIVE_PORT
    backend: str | None = None
    devices: str | None = None
    models_dir: str | None = None
    worker_threads: int | None = None  # threads per worker on that machine (its RBEE_WORKER_THREADS)
    ssh_options: tuple[tuple[str, str], ...] = ()  # every other ssh_config keyword, for ssh -o Key=Value
    source: str = HIVES_CONF_SOURCE  # HIVES_CONF_SOURCE or SSH_CONFIG_SOURCE

    def destination(self) -> str:
        """What to give ssh as the destination: the host name, or the alias for ssh to resolve."""
        return self.hostname or self.alias


class HivesConfError(ValueError):
    """hives.conf is malformed or holds an unsafe value."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.reason = message
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class UnknownHost(LookupError):
    """An alias that neither hives.conf nor ~/.ssh/config knows."""

    def __init__(self, alias: str, known: list[str], conf_path: Path) -> None:
        self.alias = alias
        self.known = known
        super().__init__(
            f"No host '{alias}' in hives.conf or ~/.ssh/config. Known: {', '.join(known) or '(none)'}. "
            f"To add it, put a block like 'Host {alias}' / '    HostName <address>' / '    User <user>' "
            f"in {conf_path}."
        )


# -- lexing ---------------------------------------------------------------------------------------------------

# Characters a remote shell would give meaning to; refused in aliases, host names and users.
_SHELL_META = frozenset(";&|$`<>(){}[]'\"\\*?!~#^")
_KEY_VALUE = re.compile(r"^\s*([^\s=]+)(?:\s*=\s*|\s+|\s*$)(.*)$")
_SINGLE_VALUED = {"hostname", "user", "port", "hiveport", "identityfile", "backend", "devices", "modelsdir",
                  "workerthreads"}
# ssh_config keywords whose values add up rather than "first one wins"; passed through in order.
_ACCUMULATING = {"localforward", "remoteforward", "dynamicforward", "sendenv", "setenv", "certificatefile"}
_MAX_INCLUDE_DEPTH = 16


class _LineError(Exception):
    """A problem on one line; the caller adds the file and line number."""


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _words(text: str) -> list[str]:
    """Split like ssh's argv_split: whitespace separates, quotes group, '#' at a word's start ends the line."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t\f":
            i += 1
            continue
        if text[i] == "#":
            break
        word: list[str] = []
        while i < n and text[i] not in " \t\f":
            if text[i] in "\"'":
                end = text.find(text[i], i + 1)
                if end < 0:
                    raise _LineError("unterminated quote")
                word.append(text[i + 1 : end])
                i = end + 1
            else:
                word.append(text[i])
                i += 1
        words.append("".join(word))
    return words


def _lines(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, keyword, the rest) for each non-blank, non-comment line; keyword "" if there is none."""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _KEY_VALUE.match(line)
        yield (number, match.group(1), match.group(2)) if match else (number, "", line)


# -- validation -----------------------------------------------------------------------------------------------


def _check_name(what: str, value: str, *, allow_at: bool = False) -> None:
    """Refuse a name that ssh could take for an option or a remote shell could interpret."""
    if not value:
        raise _LineError(f"{what} is empty")
    if _has_control(value):
        raise _LineError(f"{what} {value!r} contains a control character")
    if value.startswith("-"):
        raise _LineError(f"{what} {value!r} starts with '-'")
    if any(ch.isspace() for ch in value):
        raise _LineError(f"{what} {value!r} contains whitespace")
    bad = sorted({ch for ch in value if ch in _SHELL_META})
    if bad:
        raise _LineError(f"{what} {value!r} contains shell metacharacters: {' '.join(bad)}")
    if not allow_at and "@" in value:
        raise _LineError(f"{what} {value!r} contains '@'; put the user in a 'User' line")


def _is_pattern(word: str) -> bool:
    return word.startswith("!") or "*" in word or "?" in word


def _check_pattern(word: str) -> None:
    _check_name("Host pattern", word.removeprefix("!").replace("*", "x").replace("?", "x"))


def _threads(key: str, value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1024:
        raise _LineError(f"{key} must be a number of threads (1-1024), not {value!r}")
    return int(value)


def _port(key: str, value: str) -> int:
    try:
        port = int(value, 10)
    except ValueError:
        raise _LineError(f"{key} must be a port number (1-65535), not {value!r}") from None
    if not 1 <= port <= 65535:
        raise _LineError(f"{key} must be between 1 and 65535, not {port}")
    return port


# -- blocks and matching --------------------------------------------------------------------------------------


@dataclass
class _Setting:
    key: str  # as written
    value: str


@dataclass
class _Block:
    patterns: list[str]  # "!x" negates
    settings: list[_Setting] = field(default_factory=list)

    def matches(self, alias: str) -> bool:
        """ssh's rule: some positive pattern matches and no negated one does."""
        positive = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _glob(pattern.removeprefix("!"), alias):
                if negated:
                    return False
                positive = True
        return positive


def _glob(pattern: str, name: str) -> bool:
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, name) is not None


def _parse(path: Path, text: str) -> tuple[list[_Block], list[str]]:
    """The file's blocks (settings before any Host line form a `Host *` block) and its concrete aliases."""
    blocks = [_Block(["*"])]
    aliases: list[str] = []
    for number, keyword, rest in _lines(text):
        try:
            _parse_line(keyword, rest, blocks, aliases)
        except _LineError as exc:
            raise HivesConfError(path, number, str(exc)) from None
    return blocks, aliases


def _parse_line(keyword: str, rest: str, blocks: list[_Block], aliases: list[str]) -> None:
    if not keyword:
        raise _LineError("expected 'Keyword value'")
    if _has_control(keyword):
        raise _LineError(f"keyword {keyword!r} contains a control character")
    key = keyword.lower()
    values = _words(rest)
    if key == "host":
        blocks.append(_host_block(values, aliases))
        return
    if key in ("match", "include"):
        raise _LineError(f"'{keyword}' is not supported in hives.conf (use Host blocks)")
    if not values:
        raise _LineError(f"'{keyword}' needs a value")
    if any(_has_control(value) for value in values):
        raise _LineError(f"the value of '{keyword}' contains a control character")
    if key in _SINGLE_VALUED and len(values) > 1:
        raise _LineError(f"'{keyword}' takes one value, got {len(values)} (quote a value with spaces)")
    value = " ".join(values)
    _check_value(keyword, value)
    blocks[-1].settings.append(_Setting(keyword, value))


def _host_block(values: list[str], aliases: list[str]) -> _Block:
    """A `Host` line's block; its concrete aliases (not patterns) are added to `aliases`."""
    if not values:
        raise _LineError("'Host' needs at least one alias")
    for word in values:
        if _is_pattern(word):
            _check_pattern(word)
        else:
            _check_name("alias", word)
            if word not in aliases:
                aliases.append(word)
    return _Block(list(values))


def _check_value(keyword: str, value: str) -> None:
    """The checks a setting's value gets by its keyword (the others pass as they are)."""
    key = keyword.lower()
    if key == "hostname":
        _check_name("HostName", value)
    elif key == "user":
        _check_name("User", value, allow_at=True)
    elif key in ("port", "hiveport"):
        _port(keyword, value)
    elif key == "workerthreads":
        _threads(keyword, value)


def _resolve(alias: str, blocks: list[_Block]) -> HostConfig:
    """Collect the settings of every block matching `alias`, first value obtained wins."""
    chosen: dict[str, _Setting] = {}
    passed: list[tuple[str, str]] = []
    for block in blocks:
        if not block.matches(alias):
            continue
        for setting in block.settings:
            key = setting.key.lower()
            if key in _ACCUMULATING:
                passed.append((setting.key, setting.value))
            elif key not in chosen:
                chosen[key] = setting
                if key not in _SINGLE_VALUED:
                    passed.append((setting.key, setting.value))

    def get(key: str) -> str | None:
        setting = chosen.get(key)
        return setting.value if setting else None

    hostname = get("hostname")
    if hostname is not None:  # ssh expands %h (the alias) and %% in HostName
        hostname = hostname.replace("%%", "\0").replace("%h", alias).replace("\0", "%")
    if hostname is None and alias == LOCALHOST:
        hostname = "127.0.0.1"
    port, hive_port, identity = get("port"), get("hiveport"), get("identityfile")
    return HostConfig(
        alias=alias,
        hostname=hostname,
        user=get("user"),
        port=int(port) if port else None,
        identity_file=os.path.expanduser(identity) if identity else None,
        hive_port=int(hive_port) if hive_port else DEFAULT_HIVE_PORT,
        backend=get("backend"),
        devices=get("devices"),
        models_dir=get("modelsdir"),
        worker_threads=int(threads) if (threads := get("workerthreads")) else None,
        ssh_options=tuple(passed),
    )


# -- public API -----------------------------------------------------------------------------------------------


def load(path: Path | None = None) -> dict[str, HostConfig]:
    """Every hive in hives.conf by alias, `localhost` first; only `localhost` if the file is absent."""
    path = path or paths.hives_conf_file()
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text: universal newlines would hide a stray \r
    except FileNotFoundError:
        text = ""
    except UnicodeDecodeError as exc:
        raise HivesConfError(path, None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise HivesConfError(path, None, f"cannot read it: {exc.strerror or exc}") from None
    blocks, aliases = _parse(path, text)
    aliases = [LOCALHOST, *(alias for alias in aliases if alias != LOCALHOST)]
    return {alias: _resolve(alias, blocks) for alias in aliases}


def _default_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"


def ssh_config_aliases(path: Path | None = None) -> list[str]:
    """The concrete `Host` names in ~/.ssh/config and the files it Includes (no patterns, no negations).

    This reads someone else's file, so it is lenient: lines it cannot read and names that would be unsafe
    on a command line are skipped rather than reported.
    """
    path = path or _default_ssh_config()
    found: list[str] = []
    _collect_aliases(path, path.parent, found, depth=0)
    return found


def _collect_aliases(path: Path, base: Path, found: list[str], depth: int) -> None:
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return
    for _, keyword, rest in _lines(text):
        try:
            values = _words(rest)
        except _LineError:
            continue
        key = keyword.lower()
        if key == "host":
            for word in values:
                if _is_pattern(word) or word in found:
                    continue
                try:
                    _check_name("alias", word)
                except _LineError:
                    continue
                found.append(word)
        elif key == "include" and depth < _MAX_INCLUDE_DEPTH:
            for pattern in values:  # relative to ~/.ssh for the user's config, as ssh does
                expanded = os.path.expanduser(pattern)
                full = expanded if os.path.isabs(expanded) else str(base / expanded)
                for included in sorted(glob.glob(full)):
                    _collect_aliases(Path(included), base, found, depth + 1)


def known_aliases(path: Path | None = None, ssh_config: Path | None = None) -> list[str]:
    """hives.conf aliases (localhost first, then file order), then the ~/.ssh/config ones not already listed."""
    names = list(load(path))
    names += [alias for alias in ssh_config_aliases(ssh_config) if alias not in names]
    return names


def lookup(alias: str, path: Path | None = None, ssh_config: Path | None = None) -> HostConfig:
    """The hive called `alias`: from hives.conf, else a bare ~/.ssh/config alias, else UnknownHost."""
    hosts = load(path)
    if alias in hosts:
        return hosts[alias]
    ssh_aliases = ssh_config_aliases(ssh_config)
    if alias in ssh_aliases:
        return HostConfig(alias, source=SSH_CONFIG_SOURCE)
    known = list(hosts) + [name for name in ssh_aliases if name not in hosts]
    raise UnknownHost(alias, known, path or paths.hives_conf_file())
