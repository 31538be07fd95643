"""What this machine has to build each llama.cpp backend with: the CMake flags of each backend, the CUDA
toolkit's parts (nvcc, cuBLAS, the driver library), ROCm's hipcc, Vulkan's headers and tools, and which GPU
is here. What is missing is said in words that say how to get it (`missing_for`).

rbee/hive/engine.py builds the engines with these; `detect_backend` is the backend it builds when none is
asked for.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

BACKEND_FLAGS: dict[str, tuple[str, ...]] = {
    "cpu": ("-DGGML_METAL=OFF",) if sys.platform == "darwin" else (),
    "metal": ("-DGGML_METAL=ON",),
    "cuda": ("-DGGML_CUDA=ON",),
    "vulkan": ("-DGGML_VULKAN=ON",),
    "rocm": ("-DGGML_HIP=ON",),
}


def find_nvcc() -> str | None:
    """The CUDA compiler: $CUDA_HOME's (or $CUDA_PATH's) when set, else nvcc on PATH, else /usr/local/cuda's."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return shutil.which("nvcc", path=str(Path(home) / "bin"))
    return shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")


@functools.cache


def _nvcc_home(nvcc: str) -> Path:
    """The toolkit an nvcc belongs to, as nvcc itself says (`_HERE_`, its real folder, also behind a wrapper
    script); else the folder above the one it is in."""
    try:
        said = subprocess.run([nvcc, "--dryrun", "-c", "rbee.cu"], capture_output=True, text=True, timeout=20)
        here = re.search(r"^#\$ _HERE_=(.+)$", said.stdout + said.stderr, re.MULTILINE)
    except (OSError, subprocess.TimeoutExpired):
        here = None
    return Path(here.group(1).strip()).parent if here else Path(nvcc).resolve().parent.parent


def _cuda_roots(nvcc: str) -> list[Path]:
    """Where the CUDA toolkit's parts may be: $CUDA_HOME (or $CUDA_PATH) when set; else nvcc's own toolkit
    (Debian's /usr, /usr/local/cuda-13.0, or a pip-installed toolkit's nvidia/cu13), then /usr/local/cuda*."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return [Path(home)]
    return list(dict.fromkeys([_nvcc_home(nvcc), Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"))]))


def _cublas_ready(nvcc: str) -> bool:
    """Whether cuBLAS's headers are beside the toolkit (llama.cpp's CUDA backend needs cuBLAS; a toolkit made
    of pip wheels may have nvcc without it)."""
    return any((include / "cublas_v2.h").is_file() for root in _cuda_roots(nvcc)
               for include in (root / "include", *root.glob("targets/*/include")))


def cuda_flags(nvcc: str) -> tuple[str, ...]:
    """CMake flags that let it find this toolkit's parts.

    CMake looks libraries up by their unversioned names (libcublas.so), which a toolkit assembled from pip
    wheels lacks (it has libcublas.so.13): those are named by path. The driver library comes from the
    toolkit's stubs, else from the driver itself (ldconfig); with neither (no driver here), the build does
    without CUDA's virtual memory pool, the one part that links the driver directly.
    """
    flags = [f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    roots = _cuda_roots(nvcc)
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        flags.append(f"-DCUDAToolkit_ROOT={roots[0]}")
    folders = [f for root in roots for f in (root / "lib64", root / "lib", *root.glob("targets/*/lib"))]
    for lib, variables in (("cudart", ("CUDA_CUDART", "CUDA_cudart_LIBRARY")), ("cublas", ("CUDA_cublas_LIBRARY",)),
                           ("cublasLt", ("CUDA_cublasLt_LIBRARY",))):
        if not any((f / f"lib{lib}.so").exists() for f in folders):
            versioned = next((v for f in folders for v in sorted(f.glob(f"lib{lib}.so.*"))), None)
            if versioned is not None:
                flags += [f"-D{variable}={versioned}" for variable in variables]
    if not any((f / "stubs" / "libcuda.so").exists() or (f / "libcuda.so").exists() for f in folders):
        driver = _ldconfig_path("libcuda.so")
        flags.append(f"-DCUDA_cuda_driver_LIBRARY={driver}" if driver else "-DGGML_CUDA_NO_VMM=ON")
    return tuple(flags)


@functools.cache


def _ldconfig_path(name: str) -> str | None:
    """Where the dynamic linker finds library `name` (any version), from `ldconfig -p`."""
    ldconfig = shutil.which("ldconfig") or shutil.which("ldconfig", path="/sbin:/usr/sbin")
    if ldconfig is None:
        return None
    try:
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(rf"^\s*{re.escape(name)}(?:\.\d+)*\s.*=>\s*(\S+)$", listing, re.MULTILINE)
    return found.group(1) if found else None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _vulkan_missing() -> list[str]:
    """What the Vulkan build lacks here: its headers, the glslc shader compiler, SPIRV-Headers' CMake package."""
    sdk = os.environ.get("VULKAN_SDK")
    prefixes = [*([Path(sdk)] if sdk else []), Path("/usr"), Path("/usr/local")]
    missing = []
    headers = next((p / "include" / "vulkan" for p in prefixes if (p / "include" / "vulkan" / "vulkan.h").is_file()),
                   None)
    core = _read(headers / "vulkan_core.h") if headers is not None else ""
    if headers is None:
        missing.append("the Vulkan headers")
    elif "VK_EXT_layer_settings" not in core:
        found = re.search(r"#define VK_HEADER_VERSION (\d+)", core)
        missing.append(f"Vulkan headers newer than those in {headers} (version 1.x.{found[1] if found else '?'}: "
                       "they lack VK_EXT_layer_settings, which this llama.cpp uses)")
    if shutil.which("glslc") is None:
        missing.append("the glslc shader compiler")
    if not any(found for p in prefixes for found in (*p.glob("share/cmake/SPIRV-Headers*/SPIRV-HeadersConfig.cmake"),
                                                     *p.glob("lib*/cmake/SPIRV-Headers*/SPIRV-HeadersConfig.cmake"),
                                                     *p.glob("lib/*/cmake/SPIRV-Headers*/SPIRV-HeadersConfig.cmake"))):
        missing.append("SPIRV-Headers")
    return missing


def missing_for(backend: str) -> str | None:
    """What this machine lacks to build `backend`, in words that say how to get it; None when nothing."""
    if backend not in BACKEND_FLAGS:
        return f"unknown backend {backend!r}; choose one of: {', '.join(BACKEND_FLAGS)}"
    nvcc = find_nvcc() if backend == "cuda" else None
    if backend == "cuda" and nvcc is None:
        return ("the CUDA backend needs the CUDA toolkit's compiler, nvcc, which is not on PATH nor in "
                "$CUDA_HOME/bin or /usr/local/cuda/bin (install the CUDA toolkit: NVIDIA's installer, or "
                "Debian/Ubuntu's nvidia-cuda-toolkit)")
    if backend == "cuda" and nvcc is not None and not _cublas_ready(nvcc):
        where = ", ".join(str(r) for r in _cuda_roots(nvcc))
        return (f"the CUDA backend needs cuBLAS (cublas_v2.h and libcublas), which the CUDA toolkit of {nvcc} "
                f"lacks (looked in {where}; set CUDA_HOME to the toolkit that has it, or install cuBLAS: "
                "NVIDIA's installer includes it; Debian/Ubuntu: nvidia-cuda-toolkit)")
    if backend == "rocm" and shutil.which("hipcc") is None and not Path("/opt/rocm/bin/hipcc").is_file():
        return "the ROCm backend needs hipcc (AMD's ROCm/HIP SDK), which is not on PATH nor in /opt/rocm/bin"
    vulkan_missing = _vulkan_missing() if backend == "vulkan" else []
    if vulkan_missing:
        old = any(m.startswith("Vulkan headers newer") for m in vulkan_missing)
        hint = ("LunarG's Vulkan SDK, with VULKAN_SDK set to it" if old else
                "Debian/Ubuntu: apt install libvulkan-dev glslc spirv-headers; elsewhere: the LunarG Vulkan SDK")
        return f"the Vulkan backend needs {' and '.join(vulkan_missing)} ({hint})"
    if backend == "metal" and not (sys.platform == "darwin" and platform.machine() == "arm64"):
        return "the Metal backend builds on Apple Silicon Macs only"
    return None


def detect_backend() -> str:
    """The best backend for this machine: CUDA, ROCm or Vulkan when both its GPU and its toolkit are here,
    Metal on Apple Silicon, else the CPU."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal"
    for backend in ("cuda", "rocm", "vulkan"):
        if _gpu_for(backend) and missing_for(backend) is None:
            return backend
    return "cpu"


def nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").is_file() or shutil.which("nvidia-smi") is not None


def _gpu_for(backend: str) -> bool:
    """Whether this machine has a GPU that `backend` could drive (a toolkit alone is not a reason to build)."""
    if backend == "cuda":
        return nvidia_driver()
    if backend == "rocm":
        return Path("/dev/kfd").exists()
    if backend == "vulkan":
        return Path("/dev/dri").is_dir()
    return False
