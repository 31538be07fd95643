"""Getting the engines: llama.cpp's `llama-server`, whisper.cpp's `whisper-server` and stable-diffusion.cpp's
`sd-server` (DESIGN.md decisions 1-2, 14; `engine_sources` says where each comes from). Every function takes the
engine (`src`), llama.cpp's when not.

Order of preference: a configured path (`RBEE_LLAMA_SERVER`, `RBEE_WHISPER_SERVER`, `RBEE_SD_SERVER`), the binary
on PATH, then one rbee built from source into its data folder. The source is vendored by a PyPI source distribution at a
pinned version, so the build needs nothing but the package registry. Builds are cached by version and flags:
a machine builds each once. What a backend's build needs of this machine (toolkits, flags): toolchains.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rbee.common import paths
from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.jobs import JobEventType
from rbee.contracts.status import EngineInfo
from rbee.hive.engine_sources import LLAMA, SD, WHISPER, EngineSource
from rbee.hive.toolchains import BACKEND_FLAGS, cuda_flags, detect_backend, find_nvcc, missing_for, nvidia_driver

SOURCE_PACKAGE, SOURCE_VERSION, BINARY, COMMON_FLAGS = LLAMA.package, LLAMA.version, LLAMA.binary, LLAMA.flags
PREFERENCE = ("cuda", "rocm", "metal", "vulkan", "cpu")  # the best build first, when several are here


def default_backend() -> str:
    """The backend of the engine this machine uses: RBEE_ENGINE_BACKEND, else the best of those rbee built
    here, else the best it could build."""
    chosen = os.environ.get("RBEE_ENGINE_BACKEND")
    if chosen:
        return chosen
    return next(iter(builds()), None) or detect_backend()


def builds(src: EngineSource = LLAMA) -> dict[str, Path]:
    """rbee's builds of the pinned source on this machine, by backend, the best first."""
    found = {}
    for backend in PREFERENCE:
        folder = paths.engines_dir() / build_id(backend, src) / "bin"
        if all((folder / name).is_file() for name in src.binaries):
            found[backend] = folder / src.binary
    return found


def build_flags(backend: str, src: EngineSource = LLAMA) -> tuple[str, ...]:
    if backend not in BACKEND_FLAGS:
        raise JobFailed(f"unknown backend {backend!r}; choose one of: {', '.join(BACKEND_FLAGS)}")
    extra: tuple[str, ...] = ()
    nvcc = find_nvcc() if backend == "cuda" else None
    if nvcc is not None:
        extra = cuda_flags(nvcc)
        if nvidia_driver():
            extra += ("-DCMAKE_CUDA_ARCHITECTURES=native",)  # this machine's GPUs only: minutes, not an hour
    return src.flags + BACKEND_FLAGS[backend] + extra


def build_id(backend: str, src: EngineSource = LLAMA) -> str:
    """The cache key of a build: the engine's source version, backend and flags, OS and architecture."""
    key = json.dumps([src.version, backend, build_flags(backend, src), sys.platform, platform.machine()])
    return f"{src.project}-{src.version}-{backend}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def built_binary(backend: str | None = None, src: EngineSource = LLAMA) -> Path:
    return paths.engines_dir() / build_id(backend or default_backend(), src) / "bin" / src.binary


def locate(src: EngineSource = LLAMA) -> tuple[Path, str] | None:
    """The engine to use and where it came from, or None when there is none yet."""
    configured = os.environ.get(src.env)
    if configured:
        return Path(configured), "configured"
    on_path = shutil.which(src.binary)
    if on_path:
        return Path(on_path), "path"
    built = built_binary(src=src)
    if built.is_file():
        return built, "built"
    return None


async def describe() -> EngineInfo:
    """Which binary is used, its version, or what is wrong with it; rbee's builds here; the speech engine."""
    info = await _describe_llama()
    speech = await asyncio.to_thread(locate, WHISPER)
    image = await asyncio.to_thread(locate, SD)
    rpc = await asyncio.to_thread(rpc_server)
    return info.model_copy(update={"speech": str(speech[0]) if speech else None,
                                   "image": str(image[0]) if image else None, "rpc": str(rpc) if rpc else None})


def rpc_server(src: EngineSource = LLAMA) -> Path | None:
    """llama.cpp's RPC server (ggml-rpc-server, which lends this machine's devices to a llama-server elsewhere):
    the configured one (RBEE_RPC_SERVER), else the one beside the llama-server in use (rbee's builds have
    both), else one on PATH; None when there is none."""
    name, env = src.companions[0]
    configured = os.environ.get(env)
    if configured:
        return Path(configured)
    found = locate(src)
    beside = found[0].parent / name if found else None
    if beside is not None and beside.is_file():
        return beside
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


async def _describe_llama() -> EngineInfo:
    built = {backend: str(path) for backend, path in (await asyncio.to_thread(builds)).items()}
    found = await asyncio.to_thread(locate)  # file lookups, and ldconfig for a CUDA build's id
    if found is None:
        return EngineInfo(path=None, problem="no llama-server found: run `rbee engine install`")
    path, source = found
    if not (path.is_file() and os.access(path, os.X_OK)):
        hint = ("fix RBEE_LLAMA_SERVER or unset it to use `rbee engine install`" if source == "configured"
                else "run `rbee engine install --force`")
        return EngineInfo(path=str(path), source=source, builds=built,
                          problem=f"{path} is not an executable file; {hint}")
    try:
        proc = await asyncio.create_subprocess_exec(
            str(path), "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    except (OSError, TimeoutError) as exc:
        return EngineInfo(path=str(path), source=source, builds=built, problem=f"{path} --version failed: {exc}")
    version = parse_version_output(out.decode(errors="replace"))
    return EngineInfo(path=str(path), source=source, version=version, builds=built)


def parse_version_output(text: str) -> str | None:
    """`version: 0.5.0-dev (build 1, commit 0c1e570)` -> `0.5.0-dev (0c1e570)`; older builds print
    `version: 4589 (2e2f8f09)`."""
    match = re.search(r"version:\s*(\S+)(?:\s*\((?:build \d+, commit )?(\w+)\))?", text)
    if not match:
        return None
    return match.group(1) + (f" ({match.group(2)})" if match.group(2) else "")


async def _run(argv: Sequence[str], emit: Emit, cwd: Path | None = None, *, steps: bool = False) -> None:
    """Run a build command, streaming its output as job events; ninja's `[n/m]` becomes progress."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail = [*tail[-29:], line]
            match = re.match(r"\[(\d+)/(\d+)\]\s*(.*)", line) if steps else None
            if match:
                emit(current=int(match.group(1)), total=int(match.group(2)), unit="steps",
                     message=match.group(3)[:120])
            elif line:
                emit(JobEventType.LOG, line[:500])
        code = await proc.wait()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if code != 0:
        raise JobFailed(f"`{' '.join(argv[:3])} ...` failed with exit code {code}:\n" + "\n".join(tail[-15:]))


async def fetch_source(emit: Emit, src: EngineSource = LLAMA) -> Path:
    """The pinned source archive, downloaded once into the cache through pip (only that package's sdist:
    its build requirements, never built here, may come as wheels)."""
    src_dir = paths.ensure(paths.cache_dir() / "src")
    archive = src_dir / f"{src.package.replace('-', '_')}-{src.version}.tar.gz"
    if archive.is_file():
        emit(message=f"using cached source {archive.name}")
        return archive
    emit(message=f"downloading {src.package}=={src.version} source from the package index")
    with tempfile.TemporaryDirectory(dir=src_dir) as tmp:
        await _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", src.package,
                    f"{src.package}=={src.version}", "-d", tmp], emit)
        found = await asyncio.to_thread(lambda: list(Path(tmp).glob("*.tar.gz")))
        if not found:
            raise JobFailed(f"pip did not download a source archive of {src.package}")
        found[0].replace(archive)
    return archive


def _extract(archive: Path, dest: Path, src: EngineSource = LLAMA) -> Path:
    import tarfile  # here, not at the top: only a build unpacks an archive, an idle daemon does without it (~0.8 MB)

    prefix = f"{archive.name.removesuffix('.tar.gz')}/{src.vendored}/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise JobFailed(f"{archive.name} does not contain {src.vendored}")
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix


def _publish(build: Path, staging: Path, final: Path, backend: str, src: EngineSource = LLAMA) -> None:
    """Move a finished build into place as `final` (blocking)."""
    (staging / "bin").mkdir(parents=True)
    for name in src.binaries:
        shutil.copy2(build / "bin" / name, staging / "bin" / name)
    (staging / "build.json").write_text(json.dumps(
        {"source": f"{src.package}=={src.version}", "backend": backend,
         "flags": build_flags(backend, src), "built_at": time.time()}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def _already_there(target: Path, backend_asked: bool, src: EngineSource = LLAMA) -> tuple[Path, str] | None:
    """An engine that makes building `target` unnecessary: `target` itself; else, unless a backend was asked
    for by name, one that is configured or on PATH (not another backend's build: builds coexist)."""
    if all((target.parent / name).is_file() for name in src.binaries):
        return target, "built"
    found = locate(src)
    return found if found is not None and found[1] != "built" and not backend_asked else None


async def install(emit: Emit, *, backend: str | None = None, force: bool = False,
                  src: EngineSource = LLAMA) -> dict[str, str]:
    """Build the engine `src` (llama-server unless told) from the pinned source into the engines folder (a job
    body).

    Nothing is built when a usable engine is already there (rbee's build, a configured path, or
    one on PATH), unless `force`, or unless `backend` is asked for and not built yet: builds coexist.
    """
    chosen = backend if backend else await asyncio.to_thread(detect_backend)
    missing = await asyncio.to_thread(missing_for, chosen)  # looks at the toolkit: files, nvcc
    if missing is not None:
        raise JobFailed(f"cannot build {src.binary} for {chosen}: {missing}")
    target = await asyncio.to_thread(built_binary, chosen, src)
    found = None if force else await asyncio.to_thread(_already_there, target, backend is not None, src)
    if found is not None:
        where = {"configured": src.env, "path": "PATH", "built": "rbee's build"}[found[1]]
        emit(message=f"using {found[0]} ({where}); --force builds rbee's own anyway")
        return {"path": str(found[0]), "build": build_id(chosen, src), "cached": "yes", "source": found[1]}
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise JobFailed(f"`{tool}` was not found; install a C/C++ toolchain and CMake "
                            "(Debian/Ubuntu: apt install build-essential cmake; macOS: xcode-select --install "
                            "and brew install cmake)")
    archive = await fetch_source(emit, src)
    build_root = await asyncio.to_thread(paths.ensure, paths.engines_dir())
    started = time.monotonic()
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, ".build", ".build-", build_root))
    try:
        await _build(src, chosen, archive, tmp, emit)
        await asyncio.to_thread(_publish, tmp / "build", tmp / "out", target.parent.parent, chosen, src)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    emit(message=f"built {target} in {time.monotonic() - started:.0f} s")
    return {"path": str(target), "build": build_id(chosen, src), "cached": "no", "source": "built"}


async def _build(src: EngineSource, backend: str, archive: Path, tmp: Path, emit: Emit) -> None:
    """Unpack, configure and compile only the engine's own target, in `tmp`."""
    emit(message=f"unpacking {src.project} source")
    source = await asyncio.to_thread(_extract, archive, tmp / "src", src)
    build = tmp / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    emit(message=f"configuring ({backend})")
    await _run(["cmake", "-S", str(source), "-B", str(build), *generator, *build_flags(backend, src)], emit)
    jobs = str(os.cpu_count() or 2)
    emit(message=f"compiling {' and '.join(src.binaries)} with {jobs} jobs (several minutes on a small machine)")
    await _run(["cmake", "--build", str(build), "--target", *src.binaries, "-j", jobs], emit, steps=True)
