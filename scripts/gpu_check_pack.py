"""Pack what `scripts/gpu_check.sh` needs on a GPU machine that cannot reach the internet into `.gpu-check/`.

    python scripts/gpu_check_pack.py [--python-version 3.12] [--skip numpy]

Run it from a checkout on a machine that can reach the package index; copy the folder (about 20 MB) to the
GPU machine's checkout, where `scripts/gpu_check.sh` then needs no network. It holds:
  wheels/        rbee's runtime dependencies at the versions installed here, for the GPU machine's Python
                 (x86-64 Linux); those named by --skip are left to that machine's own (numpy by default);
  the engine's pinned source archive, trimmed of what a build never reads (docs, test vocabularies), so it
                 travels where size is limited;
  tiny.gguf      the deterministic test model (tests/fixtures/tiny_gguf.py): every answer starts "Hello".
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rbee.hive import engine  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_24_x86_64")
NOT_BUILT_FROM = ("models/", "docs/", "benches/", "media/")  # under vendor/llama.cpp/: never read by CMake


def closure(python_version: str, skip: set[str]) -> dict[str, str]:
    """rbee's runtime dependencies, all the way down, with the versions installed here."""
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    found: dict[str, str] = {}
    todo = ["rbee"]
    while todo:
        name = todo.pop()
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            key = req.name.lower().replace("_", "-")
            if (req.marker and not req.marker.evaluate(env)) or key in found or key in skip:
                continue
            found[key] = metadata.version(req.name)
            todo.append(req.name)
    return found


def download(wheels: Path, pins: dict[str, str], python_version: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(wheels),
                    *(f"{name}=={version}" for name, version in sorted(pins.items()))], check=True)


def trim_source(archive: Path, out: Path) -> None:
    """The source archive, same name and layout, without the folders a build never reads."""
    prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            rest = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and not rest.startswith(NOT_BUILT_FROM):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--skip", nargs="*", default=["numpy"], help="packages that machine has (default numpy)")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-check")
    args = parser.parse_args()
    wheels = args.out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = closure(args.python_version, {s.lower() for s in args.skip})
    print(f"{len(pins)} packages: {', '.join(f'{k}=={v}' for k, v in sorted(pins.items()))}")
    download(wheels, pins, args.python_version)
    archive = asyncio.run(engine.fetch_source(lambda *_, **__: None))
    trim_source(archive, args.out / archive.name)
    write_tiny_model(args.out / "tiny.gguf")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB; copy it into the GPU machine's checkout and run scripts/gpu_check.sh")


if __name__ == "__main__":
    main()
