"""The wheels a remote hive installs from, so it needs no internet for rbee or its dependencies.

    rbee itself     built here from the installed package (works for an editable checkout too),
                    no build backend and no network needed
    dependencies    the exact versions installed here, downloaded once per target (Python version,
                    OS, architecture) by pip from the package index into ~/.cache/rbee/wheelhouse
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import platform
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import rbee
from rbee.common import paths


class WheelhouseError(RuntimeError):
    """The wheels could not be gathered; the message says what pip said and what to do."""


@dataclass(frozen=True)
class Target:
    """The remote Python: what its wheels must be built for."""

    python: str  # "3.11"
    system: str  # uname -s: "Linux", "Darwin"
    machine: str  # uname -m: "x86_64", "aarch64", "arm64"

    @classmethod
    def here(cls) -> Target:
        return cls(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.system(), platform.machine())

    @property
    def key(self) -> str:
        return f"py{self.python}-{self.system.lower()}-{self.machine}"

    def pip_platforms(self) -> list[str]:
        if self.system == "Darwin":
            arch = "arm64" if self.machine in ("arm64", "aarch64") else "x86_64"
            return [f"macosx_{v}_0_{arch}" for v in (14, 13, 12, 11)] + [f"macosx_10_{v}_{arch}" for v in (15, 9)]
        return [f"manylinux_2_{v}_{self.machine}" for v in (28, 17, 5)] + [f"manylinux2014_{self.machine}"]

    def markers(self) -> dict[str, str]:
        env = {key: str(value) for key, value in default_environment().items()}
        env.update(python_version=self.python, python_full_version=f"{self.python}.0",
                   sys_platform={"Darwin": "darwin", "Windows": "win32"}.get(self.system, self.system.lower()),
                   platform_system=self.system, platform_machine=self.machine, extra="")
        return env


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _requirements() -> list[str]:
    """rbee's requirements: from pyproject.toml in a checkout (an editable install's metadata can lag
    behind it), else from the installed metadata."""
    pyproject = Path(rbee.__file__).parent.parent / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "rbee":
            return list(project.get("dependencies", []))
    return [r for r in importlib.metadata.distribution("rbee").requires or [] if "extra ==" not in r]


def _metadata(version: str) -> bytes:
    lines = ["Metadata-Version: 2.1", "Name: rbee", f"Version: {version}", "Requires-Python: >=3.11"]
    lines += [f"Requires-Dist: {r}" for r in _requirements()]
    return ("\n".join(lines) + "\n").encode()


def build_rbee_wheel(dest: Path) -> Path:
    """A pure-Python wheel of the rbee installed here (RECORD, METADATA and entry points included)."""
    version = rbee.__version__
    info = f"rbee-{version}.dist-info"
    package = Path(rbee.__file__).parent
    wheel = paths.ensure(dest) / f"rbee-{version}-py3-none-any.whl"
    files: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((f"rbee/{path.relative_to(package).as_posix()}", path.read_bytes()))
    files.append((f"{info}/METADATA", _metadata(version)))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: rbee-keeper\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n"))
    files.append((f"{info}/entry_points.txt", b"[console_scripts]\nrbee = rbee.keeper.main:run\n"))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files) + f"{info}/RECORD,,\n"
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [*files, (f"{info}/RECORD", record.encode())]:
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible: same code, same bytes
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    tmp.replace(wheel)
    return wheel


def pinned_dependencies(target: Target) -> list[str]:
    """`name==version` for every distribution rbee needs on `target`, at the versions installed here
    (a dependency only `target` needs, such as colorama on Windows, comes as its requirement instead)."""
    env = target.markers()
    pins: dict[str, str] = {}
    todo = _requirements()
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            pins[name] = f"{name}{req.specifier}"
            continue
        pins[name] = f"{name}=={dist.version}"
        extras_env = [dict(env, extra=e) for e in req.extras] or [env]
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or any(sub_req.marker.evaluate(e) for e in extras_env):
                todo.append(sub)
    return sorted(pins.values())


def gather(target: Target) -> Path:
    """A folder holding rbee's wheel and every dependency's wheel for `target` (cached per target)."""
    folder = paths.ensure(paths.cache_dir() / "wheelhouse" / target.key)
    pins = pinned_dependencies(target)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:", "--dest", str(folder)]
    if target != Target.here():
        argv += ["--python-version", target.python, "--implementation", "cp"]
        for tag in target.pip_platforms():
            argv += ["--platform", tag]
    have = {p.name.split("-")[0].lower().replace("_", "-") + "==" + p.name.split("-")[1]
            for p in folder.glob("*.whl")}
    missing = [pin for pin in pins if pin.replace("_", "-") not in have]
    if missing:
        proc = subprocess.run(argv + missing, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise WheelhouseError(f"pip could not download the wheels rbee needs for {target.key}:\n"
                                  f"{proc.stderr.strip()[-1500:]}\nThis machine needs to reach the package index "
                                  "once per remote platform; the remote then needs no internet.")
    build_rbee_wheel(folder)
    return folder
