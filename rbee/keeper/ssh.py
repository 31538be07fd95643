"""Run commands on a hive's machine through the system's OpenSSH client.

Using `ssh` itself (never a library) means the user's keys, ssh-agent, ~/.ssh/config and known_hosts checking
all apply exactly as in their terminal. `BatchMode=yes` makes ssh fail instead of prompting. Repeated commands
share one connection through ControlMaster (sockets in a private folder, see `rbee.common.paths`).

No shell runs on this side: ssh gets an argv list. The remote side runs COMMAND through the user's login
shell, so callers must `shlex.quote` every value they put into a command (`put` does so for its paths).

Errors:
    SSHError (RuntimeError)     ssh could not run the command: unreachable, refused key, unknown host key,
                                our own timeout. Messages start with the alias and say how to fix it.
      RemoteCommandFailed       the command ran and exited non-zero; carries rc, stdout and stderr
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import secrets
import shlex
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from rbee.common import paths
from rbee.keeper.hives_conf import SSH_CONFIG_SOURCE, HostConfig

__all__ = ["SSH", "RemoteCommandFailed", "Result", "SSHError", "control_dir", "describe", "explain"]

SSH_FAILED = 255  # ssh's exit status for its own failures
CONTROL_PERSIST_S = 60
_CONTROL_KEYS = {"controlmaster", "controlpath", "controlpersist"}
# sun_path holds 104 bytes on macOS (108 on Linux); ssh adds "/ssh-" + 40 hex (%C) + a 17-byte temporary suffix.
_MAX_CONTROL_DIR = 40


@dataclass
class Result:
    """What a remote command did."""

    rc: int
    stdout: str
    stderr: str


class SSHError(RuntimeError):
    """ssh could not run the command; the message says why and what to do."""


class RemoteCommandFailed(SSHError):
    """The remote command ran and exited non-zero."""

    def __init__(self, message: str, *, rc: int, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


def describe(host: HostConfig, user: str | None = None, port: int | None = None) -> str:
    """`alias (user@hostname:port)`, the prefix of every message about this host."""
    user = host.user or user
    port = host.port or port or (None if host.source == SSH_CONFIG_SOURCE else 22)
    target = f"{user + '@' if user else ''}{host.destination()}{f':{port}' if port else ''}"
    return f"{host.alias} ({target})"


def _ssh_command(host: HostConfig, user: str | None) -> str:
    """The plain `ssh` command a user can type to reach this host."""
    words = ["ssh"]
    if host.port and host.port != 22:
        words += ["-p", str(host.port)]
    if host.identity_file:
        words += ["-i", host.identity_file]
    user = host.user or user
    words.append(f"{user}@{host.destination()}" if user else host.destination())
    return shlex.join(words)


def _tail(text: str, lines: int = 20, chars: int = 2000) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


def _short(command: str, limit: int = 120) -> str:
    command = " ".join(command.split())
    return command if len(command) <= limit else command[: limit - 3] + "..."


_DENIED = re.compile(r"(?:(\S+)@(\S+): )?Permission denied \(([\w,-]+)\)")
_KEY_NOT_ACCESSIBLE = re.compile(r"Identity file (.+?) not accessible")
_RESOLVE = re.compile(r"Could not resolve hostname (.+?): (.+)")
_CONNECT = re.compile(
    r"connect to host (\S+) port (\d+): (Connection refused|Connection timed out|No route to host|"
    r"Network is unreachable|Operation timed out|Host is down)"
)
_TIMED_OUT = re.compile(r"Connection to (\S+) port (\d+) timed out")
_CLOSED_EARLY = re.compile(r"kex_exchange_identification|Connection (?:closed|reset) by (\S+) port (\d+)")
_REMOVE_KEY = re.compile(r"ssh-keygen (?:-f \"[^\"]*\" )?-R \"([^\"]+)\"")
_BAD_OPTION = re.compile(r"Bad configuration option: (\S+)")


def explain(host: HostConfig, stderr: str) -> str | None:
    """A clear message for a failure of ssh itself (exit status 255), from its stderr; None if not recognised."""
    denied = _DENIED.search(stderr)
    user = denied.group(1) if denied and denied.group(1) else None
    port_match = re.search(r"\bport (\d+)\b", stderr)
    label = describe(host, user, int(port_match.group(1)) if port_match else None)
    ssh_cmd = _ssh_command(host, user)

    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or re.search(r"Host key for \S+ has changed", stderr):
        remove = _REMOVE_KEY.search(stderr)
        known = remove.group(1) if remove else host.destination()
        return (
            f"{label}: the host key has CHANGED since you last connected. The machine may have been "
            "reinstalled, or someone may be intercepting the connection. Check with its owner, then remove "
            f"the old key with `ssh-keygen -R {shlex.quote(known)}` and run `{ssh_cmd}` once to accept the new one."
        )
    if "Host key verification failed" in stderr or re.search(r"No \S+ host key is known for", stderr):
        return (
            f"{label}: its host key is not known (or has changed). Run `{ssh_cmd}` once in a terminal "
            "to check the fingerprint and accept it, then try again."
        )
    if denied or "Too many authentication failures" in stderr:
        keys = f"the key {host.identity_file}" if host.identity_file else "your ssh-agent and default keys"
        missing = _KEY_NOT_ACCESSIBLE.search(stderr)
        note = f" ({missing.group(1)} does not exist or cannot be read)" if missing else ""
        copy = ["ssh-copy-id"]
        if host.identity_file:
            copy += ["-i", host.identity_file]
        if host.port and host.port != 22:
            copy += ["-p", str(host.port)]
        login = host.user or user
        copy.append(f"{login}@{host.destination()}" if login else host.destination())
        return (
            f"{label}: permission denied; the server did not accept {keys}{note}. rbee logs in with keys "
            f"only. Install your public key there with `{shlex.join(copy)}`, or set IdentityFile for "
            f"'{host.alias}' in hives.conf."
        )
    resolve = _RESOLVE.search(stderr)
    if resolve:
        return (
            f"{label}: cannot resolve the host name '{resolve.group(1)}' ({resolve.group(2).strip()}). "
            "Check HostName in hives.conf (or ~/.ssh/config) and your DNS."
        )
    connect = _CONNECT.search(stderr)
    if connect:
        where, reason = f"{connect.group(1)}:{connect.group(2)}", connect.group(3)
        if reason == "Connection refused":
            return f"{label}: connection refused at {where}. Is sshd running there, and is Port right?"
        return f"{label}: host unreachable at {where} ({reason.lower()}). Is the machine on and on this network?"
    timed_out = _TIMED_OUT.search(stderr)
    if timed_out:
        where = f"{timed_out.group(1)}:{timed_out.group(2)}"
        return f"{label}: host unreachable at {where} (timed out). Is the machine on and on this network?"
    if _CLOSED_EARLY.search(stderr):
        return (
            f"{label}: the server closed the connection before SSH could start. Is that port an SSH server, "
            "and is it refusing you (MaxStartups, fail2ban, AllowUsers)?"
        )
    if "closed by remote host" in stderr:
        return f"{label}: the connection was closed by the remote host."
    bad_option = _BAD_OPTION.search(stderr)
    if bad_option:
        return (
            f"{label}: ssh does not know the option '{bad_option.group(1)}'; check the keywords for "
            f"'{host.alias}' in hives.conf and ~/.ssh/config."
        )
    return None


def control_dir() -> Path | None:
    """The private folder (mode 700) for ControlMaster sockets; None, so no multiplexing, if it is not safely ours."""
    if sys.platform == "win32":
        return None
    folder = paths.ssh_control_dir()
    if len(os.fsencode(folder)) > _MAX_CONTROL_DIR:
        return None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():  # a symlink or someone else's
            return None
        if info.st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError:
        return None
    return folder


def _remote_path(path: str) -> str:
    """Quote a remote path for the remote shell, keeping a leading `~/` meaning the remote home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


class SSH:
    """Commands on one host over the system's `ssh`; reuse one object so commands share a connection."""

    def __init__(self, host: HostConfig, connect_timeout: int = 10) -> None:
        self.host = host
        self.connect_timeout = connect_timeout
        self._own_keys = {key.lower() for key, _ in host.ssh_options}
        self._control = None if self._own_keys & _CONTROL_KEYS else control_dir()
        self._used = False

    def _options(self) -> list[str]:
        host = self.host
        argv = ["ssh", "-o", "BatchMode=yes"]
        if "connecttimeout" not in self._own_keys:
            argv += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        if self._control is not None:
            control_path = str(self._control).replace("%", "%%") + "/ssh-%C"
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}",
                     "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
        if host.port:
            argv += ["-p", str(host.port)]
        if host.identity_file:
            argv += ["-i", host.identity_file]
        if host.user:
            argv += ["-l", host.user]
        for key, value in host.ssh_options:
            argv += ["-o", f"{key}={value}"]
        return argv

    def argv(self, command: str | None = None) -> list[str]:
        """The ssh command line that runs `command` (or opens a session if None) on this host."""
        return [*self._options(), "--", self.host.destination(), *([] if command is None else [command])]

    async def _spawn(self, argv: list[str], stdin: int | IO[bytes]) -> asyncio.subprocess.Process:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except FileNotFoundError:
            raise SSHError("no `ssh` client found: install OpenSSH (for example `apt install openssh-client`)") \
                from None
        self._used = True
        return proc

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        """Kill ssh if it still runs. Bounded: asyncio's wait() also waits for the pipes, which a child of ssh
        (a ProxyCommand) may hold a moment longer."""
        if proc.returncode is None:
            proc.kill()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                pass

    def _check(self, command: str, result: Result, check: bool) -> Result:
        if result.rc == SSH_FAILED:
            message = explain(self.host, result.stderr)
            if message:
                raise SSHError(message)
        if check and result.rc != 0:
            detail = _tail(result.stderr) or _tail(result.stdout)
            raise RemoteCommandFailed(
                f"{describe(self.host)}: `{_short(command)}` exited with status {result.rc}"
                + (f":\n{detail}" if detail else ""),
                rc=result.rc, stdout=result.stdout, stderr=result.stderr,
            )
        return result

    async def _run(self, command: str, stdin: bytes | IO[bytes] | None, check: bool, seconds: float | None) -> Result:
        pipe = asyncio.subprocess.PIPE if isinstance(stdin, bytes) else stdin
        proc = await self._spawn(self.argv(command), asyncio.subprocess.DEVNULL if pipe is None else pipe)
        try:
            async with asyncio.timeout(seconds):
                out, err = await proc.communicate(stdin if isinstance(stdin, bytes) else None)
        except TimeoutError:
            raise SSHError(f"{describe(self.host)}: did not answer within {seconds:g} s "
                           f"(running `{_short(command)}`)") from None
        finally:
            await self._reap(proc)
        assert proc.returncode is not None
        result = Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        return self._check(command, result, check)

    # `timeout` rather than the caller's asyncio.timeout (ASYNC109): it yields an SSHError that names the host.
    async def run(self, command: str, *, input: bytes | None = None, check: bool = True,
                  timeout: float | None = None) -> Result:  # noqa: ASYNC109
        """Run `command` through the remote login shell and collect its output.

        Raises SSHError when ssh cannot connect or log in (whatever `check` says), RemoteCommandFailed when
        `check` and the command exits non-zero, and SSHError when `timeout` passes (the local ssh is killed).
        """
        return await self._run(command, input, check, timeout)

    async def stream(self, command: str, on_line: Callable[[str], None], *,
                     timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Run `command`, handing each line of its stdout and stderr to `on_line` as it comes; return its status.

        A non-zero status is returned, not raised; failures of ssh itself still raise SSHError (the lines ssh
        printed about them have been passed to `on_line` by then).
        """
        proc = await self._spawn(self.argv(command), asyncio.subprocess.DEVNULL)
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        stderr_tail: list[str] = []

        async def pump(reader: asyncio.StreamReader | None, keep: bool) -> None:
            pending = b""
            while reader is not None and (chunk := await reader.read(65536)):
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace").removesuffix("\r")
                    if keep:
                        stderr_tail[:] = [*stderr_tail[-49:], line]
                    lines.put_nowait(line)
            if pending:
                line = pending.decode(errors="replace").removesuffix("\r")
                if keep:
                    stderr_tail.append(line)
                lines.put_nowait(line)
            lines.put_nowait(None)

        pumps = [asyncio.create_task(pump(proc.stdout, False)), asyncio.create_task(pump(proc.stderr, True))]
        try:
            async with asyncio.timeout(timeout):
                open_streams = len(pumps)
                while open_streams:
                    line = await lines.get()
                    if line is None:
                        open_streams -= 1
                    else:
                        on_line(line)
                rc = await proc.wait()
        except TimeoutError:
            raise SSHError(f"{describe(self.host)}: did not answer within {timeout:g} s "
                           f"(running `{_short(command)}`)") from None
        finally:
            await self._reap(proc)
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        if rc == SSH_FAILED:
            message = explain(self.host, "\n".join(stderr_tail))
            if message:
                raise SSHError(message)
        return rc

    async def _put(self, stdin: bytes | IO[bytes], remote_path: str, mode: str) -> None:
        if not re.fullmatch(r"[0-7]{3,4}", mode):
            raise ValueError(f"mode must be octal like '0644', not {mode!r}")
        if not remote_path or remote_path.endswith("/"):
            raise ValueError(f"remote_path must name a file, not {remote_path!r}")
        parent, name = posixpath.split(remote_path)
        parent = parent or "."
        tmp = _remote_path(posixpath.join(parent, f".{name}.rbee-{secrets.token_hex(4)}"))
        # umask 077: the file is private until chmod, so a secret is never readable by others, even briefly.
        script = (
            f"mkdir -p -- {_remote_path(parent)} && umask 077 && cat > {tmp} && chmod {mode} {tmp}"
            f" && mv -f -- {tmp} {_remote_path(remote_path)} || {{ rm -f -- {tmp}; exit 1; }}"
        )
        try:
            await self._run(script, stdin, True, None)
        except RemoteCommandFailed as exc:
            raise RemoteCommandFailed(
                f"{describe(self.host)}: could not write {remote_path}: {_tail(exc.stderr) or 'unknown error'}",
                rc=exc.rc, stdout=exc.stdout, stderr=exc.stderr,
            ) from None

    async def put(self, local: Path, remote_path: str, mode: str = "0644") -> None:
        """Copy a local file to `remote_path` (a leading `~/` is the remote home), atomically, with `mode`."""
        with _open_for_reading(local) as source:
            await self._put(source, remote_path, mode)

    async def put_text(self, text: str, remote_path: str, mode: str = "0600") -> None:
        """Write `text` to `remote_path` on the host, atomically, with `mode` (private by default)."""
        await self._put(text.encode(), remote_path, mode)

    async def close(self) -> None:
        """Stop the shared connection if this object used one (`ssh -O exit`); errors are ignored.

        The master is shared per host, port and user, so this also ends other sessions running through it.
        """
        if not self._used or self._control is None:
            return
        self._used = False
        if await self._control_command("exit") is None:
            return
        # The master acknowledges `exit` before it is gone; wait (briefly) until it no longer answers.
        for _ in range(30):
            if await self._control_command("check") != 0:
                return
            await asyncio.sleep(0.1)

    async def _control_command(self, command: str) -> int | None:
        """`ssh -O COMMAND` to the shared connection: its exit code; None when ssh could not run or hung."""
        argv = [*self._options(), "-O", command, "--", self.host.destination()]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return None
        try:
            async with asyncio.timeout(5):
                return await proc.wait()
        except TimeoutError:
            return None
        finally:
            await self._reap(proc)

    async def __aenter__(self) -> SSH:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def _open_for_reading(path: Path) -> IO[bytes]:
    return path.open("rb")  # a real file descriptor, so ssh reads it directly
