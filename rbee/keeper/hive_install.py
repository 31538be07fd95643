"""`rbee hive install ALIAS`: SSH in, hive up.

    1. look at the machine: OS, architecture, a Python >= 3.11 with venv, its folders, the addresses
       the SSH connection uses (the queen's address as the machine sees it, and its own)
    2. rbee there: an isolated venv, installed from wheels shipped from here (no internet needed)
    3. the engines: this machine's builds copied when OS and architecture match, else llama-server built there
       (whisper-server and sd-server go when they are built here; the output says how to build them there)
    4. a join token from the queen, and the hive's config (private to its user)
    5. the queen listening for hives (restarted once, the first time a hive is enrolled)
    6. the hive started as a service, then registered with the queen

Every step checks what is already there, so running it again repairs a half-done install.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rbee import __version__
from rbee.common import paths, settings, tls, tls_ca
from rbee.common.daemon import is_loopback
from rbee.hive import engine
from rbee.hive.config import HiveConfig
from rbee.hive.engine_sources import LLAMA, SD, WHISPER, EngineSource
from rbee.keeper import wheelhouse
from rbee.keeper.client import QueenClient
from rbee.keeper.daemon import ensure_queen, stop_queen
from rbee.keeper.hives_conf import HostConfig
from rbee.keeper.output import CLIError, Output
from rbee.keeper.ssh import SSH, RemoteCommandFailed

MIN_PYTHON = (3, 11)
KEYLESS = (WHISPER, SD)  # shipped when built here (`rbee engine install --engine whisper|sd`); not built there unasked
MEDIA = {WHISPER.name: "speech to text", SD.name: "text to image"}

_PROBE = r"""
echo "os=$(uname -s)"; echo "arch=$(uname -m)"; echo "home=$HOME"
echo "config=${XDG_CONFIG_HOME:-$HOME/.config}/rbee"; echo "data=${XDG_DATA_HOME:-$HOME/.local/share}/rbee"
echo "cache=${XDG_CACHE_HOME:-$HOME/.cache}/rbee"; echo "conn=${SSH_CONNECTION:-}"
for p in python3.13 python3.12 python3.11 python3; do
  exe=$(command -v "$p" 2>/dev/null) || continue
  v=$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
  venv=no; "$exe" -c 'import venv, ensurepip' >/dev/null 2>&1 && venv=yes
  echo "python=$exe $v $venv"
done
"""


@dataclass(frozen=True)
class Remote:
    """What step 1 found on the machine."""

    system: str
    machine: str
    home: str
    config_dir: str
    data_dir: str
    cache_dir: str
    queen_side_ip: str  # the keeper's address as the remote sees it
    own_ip: str  # the remote's address on the SSH connection
    python: str
    python_version: str

    @property
    def venv(self) -> str:
        return f"{self.data_dir}/venv"

    @property
    def rbee(self) -> str:
        return f"{self.venv}/bin/rbee"


def parse_probe(host: HostConfig, text: str) -> Remote:
    """Read the probe's output; refuse a machine without a usable Python with what to install."""
    values: dict[str, str] = {}
    pythons: list[tuple[str, tuple[int, int], bool]] = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "python":
            try:
                exe, version, venv = value.rsplit(None, 2)
                major, minor = (int(x) for x in version.split("."))
            except ValueError:
                continue  # an answer we cannot read is a Python we do not use
            pythons.append((exe, (major, minor), venv == "yes"))
        elif key:
            values[key] = value.strip()
    recent = [p for p in pythons if p[1] >= MIN_PYTHON]
    usable = [p for p in recent if p[2]]
    if not usable:
        found = ", ".join(f"{exe} ({v[0]}.{v[1]})" for exe, v, _ in pythons) or "no python3 at all"
        if recent:
            fix = ("its venv module is missing: install it (Debian/Ubuntu: `sudo apt install python3-venv`; "
                   "Fedora: `sudo dnf install python3`)")
        else:
            fix = ("install Python 3.11 or newer (Debian/Ubuntu: `sudo apt install python3 python3-venv`; "
                   "macOS: `brew install python`)")
        raise CLIError(f"{host.alias} has no usable Python (found: {found}): {fix}, then run "
                       f"`rbee hive install {host.alias}` again.")
    exe, (major, minor), _ = usable[0]
    conn = values.get("conn", "").split()
    if len(conn) != 4:
        raise CLIError(f"{host.alias}: the SSH server did not say which addresses the connection uses "
                       "(SSH_CONNECTION is empty); give the queen's address with --queen-url.")
    if ":" in conn[0]:
        raise CLIError(f"{host.alias} is reached over IPv6 ({conn[2]}); rbee's hives use IPv4 for now. Give its "
                       "IPv4 address as HostName in hives.conf.")
    return Remote(values.get("os", "?"), values.get("arch", "?"), values["home"], values["config"],
                  values["data"], values["cache"], conn[0], conn[2], exe, f"{major}.{minor}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Installer:
    def __init__(self, host: HostConfig, client: QueenClient, out: Output, queen_url: str | None = None) -> None:
        self.host = host
        self.client = client
        self.out = out
        self.queen_url = queen_url
        self.ssh = SSH(host)
        self._step = 0

    def _say(self, message: str) -> None:
        self._step += 1
        self.out.info(f"[{self._step}/6] {message}")

    async def _run(self, command: str, seconds: float | None = None) -> str:
        try:
            return (await self.ssh.run(command, timeout=seconds)).stdout
        except RemoteCommandFailed as exc:
            detail = (exc.stderr or exc.stdout).strip()[-1500:]
            raise CLIError(f"{self.host.alias}: `{command[:80]}` failed:\n{detail}") from exc

    async def probe(self) -> Remote:
        return parse_probe(self.host, await self._run(_PROBE))

    async def install(self, force: bool = False) -> None:
        alias = self.host.alias
        self._say(f"connecting to {alias} ({self.host.destination()})")
        remote = await self.probe()
        self.out.success(f"{alias}: {remote.system} {remote.machine}, Python {remote.python_version} "
                         f"({remote.python}), address {remote.own_ip}")
        self.queen_url_for(remote)  # a plain-HTTP --queen-url on a TLS cluster is refused before anything is done
        self._say(f"installing rbee {__version__} in {remote.venv}")
        await self.install_rbee(remote, force)
        self._say("putting the engines there (llama-server; whisper-server and sd-server when built here)")
        await self.install_engine(remote)
        self._say("enrolling the hive with the queen")
        await self.write_config(remote)
        self._say("starting the hive")
        before = await self.registrations()
        await self.start(remote)
        self._say("waiting for the hive to register with the queen")
        await self.wait_registered(remote, before)

    async def rotate_certificates(self) -> None:
        """Give an installed hive a certificate from the current cluster CA (after `rbee tls init --force`),
        restart it, and wait until it is back: its token, models and settings stay."""
        remote = await self.probe()
        await self._run(f"test -f {shlex.quote(remote.config_dir + '/hive.toml')} || {{ echo 'no hive is "
                        f"installed on {self.host.alias}: run `rbee hive install {self.host.alias}`' >&2; exit 3; }}")
        certificate, reissued = await self.ship_certificates(remote)
        if certificate is None:
            raise CLIError("TLS is off on this queen: `rbee tls init` first.")
        await asyncio.to_thread(self.client.request, "PUT", f"/v1/hives/{self.host.alias}/certificate",
                                json={"certificate": certificate})
        if reissued and await asyncio.to_thread(self.client.health) is not None:
            await self.restart_queen(f"its certificate now also names {remote.queen_side_ip}")
        before = await self.registrations()
        await self.start(remote)
        await self.wait_registered(remote, before)

    async def install_rbee(self, remote: Remote, force: bool) -> None:
        target = wheelhouse.Target(remote.python_version, remote.system, remote.machine)
        try:
            folder = await asyncio.to_thread(wheelhouse.gather, target)
        except wheelhouse.WheelhouseError as exc:
            raise CLIError(str(exc)) from exc
        ours = folder / f"rbee-{__version__}-py3-none-any.whl"
        stamp = f"{remote.venv}/.rbee-wheel-sha256"
        digest = await asyncio.to_thread(_sha256, ours)
        there = (await self.ssh.run(f"cat {shlex.quote(stamp)} 2>/dev/null", check=False)).stdout.strip()
        if there == digest and not force:
            self.out.success(f"rbee {__version__} is already installed on {self.host.alias}")
            return
        wheels_dir = f"{remote.cache_dir}/wheels"
        listing = await self._run(f"mkdir -p {shlex.quote(wheels_dir)} && ls -1 {shlex.quote(wheels_dir)}")
        present = set(listing.split())
        to_ship = [w for w in sorted(folder.glob("*.whl")) if w.name not in present or w == ours]
        with self.out.err.status(f"copying {len(to_ship)} wheel(s) to {self.host.alias}…"):
            for wheel in to_ship:
                await self.ssh.put(wheel, f"{wheels_dir}/{wheel.name}")
        venv, py = shlex.quote(remote.venv), shlex.quote(remote.python)
        pip = f"{venv}/bin/python -m pip install --quiet --disable-pip-version-check --no-index " \
              f"--find-links {shlex.quote(wheels_dir)}"
        with self.out.err.status(f"installing rbee and its dependencies on {self.host.alias}…"):
            await self._run(f"test -x {venv}/bin/python || {py} -m venv {venv}")
            await self._run(f"{pip} 'rbee=={__version__}' && {pip} --force-reinstall --no-deps "
                            f"{shlex.quote(f'{wheels_dir}/{ours.name}')}", seconds=900)
            await self.ssh.put_text(digest + "\n", stamp, mode="0644")
        self.out.success(f"rbee {__version__} installed on {self.host.alias}")

    async def _our_build_fits(self, remote: Remote) -> str | None:
        """Why this machine's CPU builds cannot be copied there (another OS or architecture, a GPU to build for);
        None when they can (GPU builds are made for the GPUs of the machine that builds them)."""
        here = wheelhouse.Target.here()
        if (remote.system, remote.machine) != (here.system, here.machine):
            return f"{remote.system} {remote.machine} differs from here"
        asked = await self.ssh.run(f"{shlex.quote(remote.venv)}/bin/python -c "
                                   "'from rbee.hive import engine; print(engine.detect_backend())'", check=False)
        backend = asked.stdout.strip() if asked.rc == 0 and asked.stdout.strip() else "cpu"
        return f"it has a GPU for {backend}" if backend != "cpu" else None

    async def _ship(self, remote: Remote, src: EngineSource) -> str | None:
        """Copy this machine's CPU build of `src` (every binary of it) where the remote's hive looks for it;
        None when it runs there, else why not (then nothing of it is left there)."""
        local = engine.built_binary("cpu", src)
        if not all((local.parent / n).is_file() for n in src.binaries):
            return "no local CPU build to copy"
        remote_bin = f"{remote.data_dir}/engines/{engine.build_id('cpu', src)}/bin"
        copied = False
        for name in src.binaries:  # llama-server and the RPC server beside it; whisper-server; sd-server
            copied = await self._copy_binary(local.parent / name, f"{remote_bin}/{name}") or copied
        runs = await self.ssh.run(f"{shlex.quote(f'{remote_bin}/{src.binary}')} --version", check=False)
        if runs.rc == 0:
            self.out.success(f"{src.binary} copied to {self.host.alias}: {remote_bin}/{src.binary}" if copied
                             else f"{src.binary} is already on {self.host.alias}")
            return None
        await self.ssh.run("rm -f " + " ".join(shlex.quote(f"{remote_bin}/{n}") for n in src.binaries), check=False)
        return f"the copied build does not run there ({(runs.stderr or runs.stdout).strip()[-200:]})"

    async def install_engine(self, remote: Remote) -> None:
        """Copy this machine's CPU build of llama-server when the remote has the same OS and architecture and
        no GPU to build for; else build it there. Then the speech and image engines: copied when built here."""
        fits = await self._our_build_fits(remote)
        why = fits or await self._ship(remote, LLAMA)
        if why is not None:
            await self._build_there(remote, why)
        await self.install_keyless_engines(remote, fits)

    async def install_keyless_engines(self, remote: Remote, fits: str | None) -> None:
        """whisper-server and sd-server, copied when this machine has built them and its builds fit the remote;
        never built there unasked (minutes each): the output says how to add one that did not go."""
        for src in KEYLESS:
            why = fits or await self._ship(remote, src)
            if why is not None:
                self.out.info(f"{src.binary} ({MEDIA[src.name]}) not installed on {self.host.alias}: {why}; "
                              f"`rbee engine install --engine {src.name} -a {self.host.alias}` builds it there")

    async def _build_there(self, remote: Remote, why: str) -> None:
        self.out.info(f"building the engine on {self.host.alias} ({why}); this takes minutes…")
        command = f"{shlex.quote(remote.rbee)} engine install --local --verbose"
        rc = await self.ssh.stream(command, lambda line: self.out.err.print(f"  [dim]{line}[/dim]", markup=True,
                                                                            highlight=False))
        if rc != 0:
            raise CLIError(f"building the engine on {self.host.alias} failed (exit {rc}); the lines above say why. "
                           "It needs a C/C++ toolchain, CMake and the package index there; or put llama-server "
                           "on its PATH.")

    async def _copy_binary(self, local: Path, there: str) -> bool:
        """Copy one binary of the engine's build to `there` unless the same file is there; whether it did."""
        digest = await asyncio.to_thread(_sha256, local)
        found = (await self.ssh.run(f"sha256sum {shlex.quote(there)} 2>/dev/null", check=False)).stdout
        if found.split()[:1] == [digest]:
            return False
        size = (await asyncio.to_thread(local.stat)).st_size
        with self.out.err.status(f"copying {local.name} ({size / 1e6:.0f} MB) to "
                                 f"{self.host.alias}…"):
            await self.ssh.put(local, there, mode="0755")
        return True

    def queen_url_for(self, remote: Remote) -> str:
        if self.queen_url:
            split = urlsplit(self.queen_url)
            if settings.queen_tls() and split.scheme != "https" and not is_loopback(split.hostname or ""):
                raise CLIError(f"--queen-url {self.queen_url} is plain HTTP, but this queen uses TLS (`rbee tls "
                               f"init`): the hive's join token would cross the network in clear. Give an https:// "
                               "URL, or leave --queen-url out.")
            return self.queen_url
        port = urlsplit(self.client.base_url).port or settings.DEFAULT_QUEEN_PORT
        return f"{'https' if settings.queen_tls() else 'http'}://{remote.queen_side_ip}:{port}"

    async def ship_certificates(self, remote: Remote) -> tuple[str | None, bool]:
        """With TLS on (`rbee tls init`), give the hive a certificate for the address the queen reaches it at,
        and make sure the queen's own certificate names the address the hive reaches it at. The hive's
        certificate (the queen accepts no other from it), and whether the queen's certificate had to be
        reissued (it then needs a restart)."""
        if not settings.queen_tls():
            return None, False
        names = [remote.own_ip, self.host.alias] + ([self.host.hostname] if self.host.hostname else [])
        try:
            cert, key = await asyncio.to_thread(tls_ca.issue, f"rbee hive {self.host.alias}", names)
            ca = await asyncio.to_thread(tls.cluster_ca().read_bytes)
            queen_cert = paths.tls_dir() / "queen.pem"
            wanted = [remote.queen_side_ip] + ([given] if (given := urlsplit(self.queen_url or "").hostname) else [])
            has = tls_ca.names_in(queen_cert) if queen_cert.is_file() else set()
            missing = [name for name in wanted if name not in has] if queen_cert.is_file() else []
            reissue = bool(missing)
            if reissue:  # every name it had, and those it lacked
                await asyncio.to_thread(tls_ca.issue_queen_cert, sorted(has | set(missing)))
        except (tls.TLSError, OSError) as exc:
            raise CLIError(f"cannot make a certificate for {self.host.alias}: {exc}") from exc
        folder = f"{remote.config_dir}/tls"
        await self.ssh.put_text(ca.decode(), f"{folder}/ca.pem", mode="0644")
        await self.ssh.put_text(cert.decode(), f"{folder}/hive.pem", mode="0644")
        await self.ssh.put_text(key.decode(), f"{folder}/hive.key", mode="0600")
        named = ", ".join(dict.fromkeys(names))
        self.out.success(f"{self.host.alias} has a certificate from the cluster CA for {named}")
        return cert.decode(), reissue

    async def write_config(self, remote: Remote) -> None:
        certificate, reissued = await self.ship_certificates(remote)
        enrolled = await asyncio.to_thread(self.client.post, "/v1/hives", {
            "alias": self.host.alias, "address": remote.own_ip, "certificate": certificate})
        config = HiveConfig(alias=self.host.alias, queen_url=self.queen_url_for(remote), token=enrolled["token"],
                            address=remote.own_ip, port=self.host.hive_port, models_dir=self.host.models_dir,
                            tls=settings.queen_tls(), worker_threads=self.host.worker_threads)
        await self.ssh.put_text(config.to_toml(), f"{remote.config_dir}/hive.toml", mode="0600")
        self.out.success(f"{self.host.alias} enrolled; it reports to {config.queen_url}")
        health = await asyncio.to_thread(self.client.health)
        if reissued and health is not None:
            await self.restart_queen(f"its certificate now also names {remote.queen_side_ip}")
        elif health is not None and health.listen_host in (None, "127.0.0.1", "localhost", "::1"):
            await self.restart_queen(f"so that hives can reach it: it now listens on {settings.queen_network_host()}, "
                                     "where it answers only hives with a join token")

    async def restart_queen(self, why: str) -> None:
        self.out.info(f"restarting the queen: {why}")
        await asyncio.to_thread(stop_queen, self.client, self.out, True)
        await asyncio.to_thread(ensure_queen, self.client, self.out)

    async def start(self, remote: Remote) -> None:
        out = await self._run(f"{shlex.quote(remote.rbee)} hive-agent restart 2>&1")
        self.out.success(out.strip().splitlines()[-1].lstrip("✓ ") if out.strip() else "hive started")

    async def registrations(self) -> int:
        """How often the queen has heard this hive register (the process started next must add one)."""
        hives = await asyncio.to_thread(self.client.get, "/v1/hives")
        return next((int(h.get("registrations", 0)) for h in hives if h["alias"] == self.host.alias), 0)

    async def wait_registered(self, remote: Remote, before: int = 0) -> None:
        """Until the hive just started registers: a registration of the process it replaced does not count."""
        wait_s = settings.hive_register_timeout_s()
        deadline = time.monotonic() + wait_s
        with self.out.err.status(f"waiting for {self.host.alias} to register…"):
            while time.monotonic() < deadline:
                hives = await asyncio.to_thread(self.client.get, "/v1/hives")
                mine = next((h for h in hives if h["alias"] == self.host.alias), None)
                if mine is not None and mine["state"] == "ready" and int(mine.get("registrations", 0)) > before:
                    self.out.success(f"hive {self.host.alias} is ready at {mine['address']}:{mine['port']} "
                                     f"(rbee {mine['version']})")
                    if mine.get("problem"):
                        self.out.warn(mine["problem"])
                    return
                await asyncio.sleep(0.5)
        logs = (await self.ssh.run(f"{shlex.quote(remote.rbee)} hive-agent logs -n 15", check=False)).stdout
        raise CLIError(f"{self.host.alias} did not register with the queen within {wait_s:.0f} s. "
                       f"Can it reach {self.queen_url_for(remote)}? The end of its log:\n{logs.strip()}")

    async def agent(self, command: str) -> str:
        """Run `rbee hive-agent COMMAND` on the machine (start, stop, restart, logs, uninstall)."""
        remote = await self.probe()
        return await self._run(f"test -x {shlex.quote(remote.rbee)} || {{ echo 'rbee is not installed on this "
                               f"machine' >&2; exit 3; }}; {shlex.quote(remote.rbee)} hive-agent {command} 2>&1")

    async def follow_logs(self, lines: int, worker: str | None = None) -> int:
        remote = await self.probe()
        which = f" --worker {shlex.quote(worker)}" if worker else ""
        return await self.ssh.stream(f"{shlex.quote(remote.rbee)} hive-agent logs -f -n {lines}{which}",
                                     lambda line: print(line, flush=True))

    async def uninstall(self) -> None:
        remote = await self.probe()
        await self.ssh.run(f"{shlex.quote(remote.rbee)} hive-agent uninstall", check=False)
        await self._run(f"rm -rf {shlex.quote(remote.venv)} {shlex.quote(remote.cache_dir + '/wheels')}")

    async def close(self) -> None:
        await self.ssh.close()

