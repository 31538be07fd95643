from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerMode
from rbee.hive.worker import POLL_GAP_S, WorkerSpec, build_argv, health_path, poll_gap_s, worker_env


def _spec(mode: WorkerMode, threads: int | None = None) -> WorkerSpec:
    model = ModelEntry(name="tiny", path="/models/tiny.gguf", size_bytes=1, added_at=time.time())
    return WorkerSpec(model=model, mode=mode, engine=Path("/bin/llama-server"), slots=4, context_per_slot=2048,
                      threads=threads)


def test_argv_for_generation() -> None:
    argv = build_argv(_spec(WorkerMode.GENERATE), 5555)
    assert argv[0] == "/bin/llama-server"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--model"] == "/models/tiny.gguf" and pairs["--alias"] == "tiny"
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "5555"
    assert pairs["--parallel"] == "4" and pairs["--ctx-size"] == str(4 * 2048)
    assert "--embeddings" not in argv and "--threads" not in argv


def test_argv_for_embeddings_and_threads() -> None:
    argv = build_argv(_spec(WorkerMode.EMBED, threads=1), 5555)
    assert argv[argv.index("--pooling") + 1] == "mean" and "--embeddings" in argv
    assert argv[argv.index("--threads") + 1] == "1"


def test_only_text_workers_get_the_slot_cache_folder() -> None:
    folder = Path("/state/hive/slot-cache")
    text = build_argv(dataclasses.replace(_spec(WorkerMode.GENERATE), slot_save_path=folder), 5555)
    assert text[text.index("--slot-save-path") + 1] == str(folder)
    embed = build_argv(dataclasses.replace(_spec(WorkerMode.EMBED), slot_save_path=folder), 5555)
    assert "--slot-save-path" not in embed and "--slot-save-path" not in build_argv(_spec(WorkerMode.GENERATE), 1)


def test_text_workers_get_the_host_memory_prompt_cache_asked_and_none_by_default() -> None:
    """llama-server's own default (--cache-ram 8192) would hold up to 8 GiB of RAM that no estimate counts."""
    text = build_argv(_spec(WorkerMode.GENERATE), 5555)
    assert text[text.index("--cache-ram") + 1] == "0"
    asked = build_argv(dataclasses.replace(_spec(WorkerMode.GENERATE), cache_ram_mib=512), 5555)
    assert asked[asked.index("--cache-ram") + 1] == "512"
    assert "--cache-ram" not in build_argv(dataclasses.replace(_spec(WorkerMode.EMBED), cache_ram_mib=512), 5555)


def test_the_key_is_never_on_the_command_line() -> None:
    argv = build_argv(_spec(WorkerMode.GENERATE), 5555)
    assert not any("key" in part for part in argv)
    assert worker_env("s3cret")["LLAMA_API_KEY"] == "s3cret"


def test_argv_pins_one_device_or_spreads_over_several_by_size() -> None:
    one = build_argv(dataclasses.replace(_spec(WorkerMode.GENERATE), device="cuda1", engine_device="CUDA1"), 1)
    assert one[one.index("--device") + 1] == "CUDA1" and one[one.index("--n-gpu-layers") + 1] == "999"
    assert "--tensor-split" not in one
    spread = dataclasses.replace(_spec(WorkerMode.GENERATE), device="cuda0+cuda1", engine_device="CUDA0,CUDA1",
                                 tensor_split=(24154, 8188))
    argv = build_argv(spread, 1)
    assert argv[argv.index("--device") + 1] == "CUDA0,CUDA1" and argv[argv.index("--split-mode") + 1] == "layer"
    assert argv[argv.index("--tensor-split") + 1] == "24154,8188"
    cpu = build_argv(_spec(WorkerMode.GENERATE), 1)
    assert cpu[cpu.index("--device") + 1] == "none" and cpu[cpu.index("--n-gpu-layers") + 1] == "0"


def test_argv_for_an_image_worker_is_sd_servers() -> None:
    image = dataclasses.replace(_spec(WorkerMode.IMAGE, threads=2), engine=Path("/bin/sd-server"))
    argv = build_argv(image, 5555)
    assert argv == ["/bin/sd-server", "--model", "/models/tiny.gguf", "--listen-ip", "127.0.0.1", "--listen-port",
                    "5555", "--threads", "2"]
    assert health_path(WorkerMode.IMAGE) == "/" and health_path(WorkerMode.TRANSCRIBE) == "/health"


def test_argv_for_a_speech_worker_is_whisper_servers() -> None:
    speech = dataclasses.replace(_spec(WorkerMode.TRANSCRIBE, threads=2), engine=Path("/bin/whisper-server"))
    argv = build_argv(speech, 5555)
    assert argv[:7] == ["/bin/whisper-server", "--model", "/models/tiny.gguf", "--host", "127.0.0.1", "--port",
                        "5555"]
    assert argv[argv.index("--threads") + 1] == "2" and argv[-1] == "--no-gpu"
    assert "--parallel" not in argv and "--alias" not in argv  # llama-server's flags would stop whisper-server
    on_gpu = build_argv(dataclasses.replace(speech, device="cuda1", engine_device="CUDA1"), 5555)
    assert on_gpu[-2:] == ["--device", "1"]


def test_argv_of_a_spread_across_hives_names_its_rpc_servers_before_their_devices() -> None:
    spread = dataclasses.replace(_spec(WorkerMode.GENERATE), engine_device="RPC0,RPC1,CUDA0", gpu_layers=20,
                                 rpc=("127.0.0.1:4001", "127.0.0.1:4002"), tensor_split=(3000, 2000, 5000))
    argv = build_argv(spread, 1)
    assert argv[argv.index("--rpc") + 1] == "127.0.0.1:4001,127.0.0.1:4002"
    assert argv.index("--rpc") < argv.index("--device")  # llama-server knows RPC0 only once --rpc is read
    assert argv[argv.index("--device") + 1] == "RPC0,RPC1,CUDA0" and argv[argv.index("--n-gpu-layers") + 1] == "20"
    assert argv[argv.index("--tensor-split") + 1] == "3000,2000,5000"
    assert "--rpc" not in build_argv(_spec(WorkerMode.GENERATE), 1)


def test_a_starting_workers_health_is_asked_again_after_a_tenth_of_the_wait_within_bounds() -> None:
    low, high = POLL_GAP_S
    assert poll_gap_s(0.0) == low  # a worker that starts in 20 ms is seen within 2 ms of it
    assert poll_gap_s(0.1) == 0.01
    assert poll_gap_s(3.0) == high  # a model loading for minutes is asked 20 times a second, not 500
    gaps = [poll_gap_s(t / 100) for t in range(200)]
    assert gaps == sorted(gaps)
