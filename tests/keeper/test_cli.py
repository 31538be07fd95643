"""The `rbee` command as a user runs it: real processes, a real queen started on demand."""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from rbee import __version__
from tests.conftest import Queen


@pytest.fixture
def idle_queen(make_queen: Callable[..., Queen]) -> Iterator[Queen]:
    """A queen home and port with no queen running yet; whatever the CLI starts is stopped after."""
    queen = make_queen()
    yield queen
    queen.cli("queen", "stop")


def _health(queen: Queen) -> dict[str, object]:
    return dict(httpx.get(f"{queen.url}/health", timeout=5).json())


def test_infer_starts_the_queen_then_reuses_it_and_the_worker(idle_queen: Queen, tiny_model: Path) -> None:
    first = idle_queen.cli("infer", "-m", str(tiny_model), "-p", "hello", "--max-tokens", "8", check=True)
    assert first.stdout.strip()
    assert "queen started" in first.stderr
    pid = _health(idle_queen)["pid"]
    assert (idle_queen.home / "state" / "queen.pid").read_text().strip() == str(pid)
    assert (idle_queen.home / "state" / "queen.log").is_file()
    workers = idle_queen.workers()
    assert len(workers) == 1

    second = idle_queen.cli("infer", "-m", "tiny", "-p", "hello again", "--max-tokens", "8", "--seed", "3",
                            "--temperature", "0.5", "--top-p", "0.9", "--system", "be brief", check=True)
    assert second.stdout.strip()
    assert "queen started" not in second.stderr
    assert _health(idle_queen)["pid"] == pid
    assert [w["id"] for w in idle_queen.workers()] == [workers[0]["id"]]


def test_infer_json_prints_the_whole_response(idle_queen: Queen, tiny_model: Path) -> None:
    result = idle_queen.cli("infer", "-m", str(tiny_model), "-p", "hi", "--max-tokens", "5", "--json", check=True)
    response = json.loads(result.stdout)
    assert response["object"] == "chat.completion"
    assert response["usage"]["completion_tokens"] == 5


def test_a_queen_older_than_the_cli_is_restarted(idle_queen: Queen, tiny_model: Path) -> None:
    idle_queen.env["RBEE_REPORTED_VERSION"] = "0.0.1"
    idle_queen.start()
    old_pid = _health(idle_queen)["pid"]
    assert _health(idle_queen)["version"] == "0.0.1"
    result = idle_queen.cli("infer", "-m", str(tiny_model), "-p", "hi", "--max-tokens", "4",
                            env={"RBEE_REPORTED_VERSION": ""}, check=True)
    assert "restarting the queen" in result.stderr and "0.0.1" in result.stderr
    health = _health(idle_queen)
    assert health["pid"] != old_pid and health["version"] == __version__


def test_unknown_model_is_a_clear_error_without_traceback(idle_queen: Queen) -> None:
    result = idle_queen.cli("infer", "-m", "no-such-model", "-p", "hi")
    assert result.returncode == 1
    assert "no-such-model" in result.stderr and "rbee status" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_file_is_a_clear_error(idle_queen: Queen, tmp_path: Path) -> None:
    result = idle_queen.cli("infer", "-m", str(tmp_path / "nope.gguf"), "-p", "hi")
    assert result.returncode == 1 and "no such model file" in result.stderr
    assert "Traceback" not in result.stderr


class _NotAQueen(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>some other web app</html>")

    def log_message(self, *args: object) -> None:
        pass


def test_port_taken_by_another_program_is_said_so(idle_queen: Queen) -> None:
    server = http.server.HTTPServer(("127.0.0.1", idle_queen.port), _NotAQueen)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = idle_queen.cli("infer", "-p", "hi")
        assert result.returncode == 1
        assert f"port {idle_queen.port} is taken by another program" in result.stderr
        foreground = idle_queen.cli("queen", "start", "--foreground", "--port", str(idle_queen.port))
        assert foreground.returncode == 1 and "already in use" in foreground.stderr
        assert "Traceback" not in result.stderr + foreground.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_queen_start_status_stop(idle_queen: Queen) -> None:
    assert idle_queen.cli("queen", "status").returncode == 1
    started = idle_queen.cli("queen", "start", check=True)
    assert "queen started" in started.stderr
    again = idle_queen.cli("queen", "start", check=True)
    assert "already running" in again.stderr
    status = idle_queen.cli("queen", "status", check=True)
    assert f"pid {_health(idle_queen)['pid']}" in status.stdout
    stopped = idle_queen.cli("queen", "stop", check=True)
    assert "queen stopped" in stopped.stderr
    assert idle_queen.cli("queen", "status").returncode == 1
    assert not (idle_queen.home / "state" / "queen.pid").exists()


def test_status_and_worker_list_and_stop(idle_queen: Queen, tiny_model: Path) -> None:
    assert idle_queen.cli("status").returncode == 1  # no queen yet: says so
    idle_queen.cli("infer", "-m", str(tiny_model), "-p", "hi", "--max-tokens", "4", check=True)
    status = idle_queen.cli("status", check=True).stdout
    for expected in ("queen", "localhost", "tiny", "ready", "Workers", "Models", "configured"):
        assert expected in status
    worker_id = idle_queen.workers()[0]["id"]
    assert worker_id in idle_queen.cli("worker", "list", check=True).stdout
    stopped = idle_queen.cli("worker", "stop", str(worker_id), check=True)
    assert f"stopped {worker_id}" in stopped.stderr
    assert idle_queen.workers() == []
    missing = idle_queen.cli("worker", "stop", "localhost-w99")
    assert missing.returncode == 1 and "no worker 'localhost-w99'" in missing.stderr


def test_ctrl_c_during_infer_exits_cleanly(idle_queen: Queen, tiny_model: Path, tmp_path: Path) -> None:
    idle_queen.cli("queen", "start", check=True)
    # A generation that cannot end before the Ctrl-C: 32k tokens of context (seconds even for the tiny model),
    # where the suite's 512 would end it in a fraction of a second (and the CLI exit 0, not 130).
    endless = tmp_path / "endless-ctrl-c.gguf"
    shutil.copyfile(tiny_model, endless)
    idle_queen.cli("model", "set", "endless-ctrl-c", "--ctx", "32768", "--slots", "1", check=True)
    proc = subprocess.Popen([sys.executable, "-m", "rbee", "infer", "-m", str(endless), "-p", "hi",
                             "--max-tokens", "100000"], env=idle_queen.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    # Tokens are flowing (64 bytes: past the first token, where the CLI stops its spinner; a Ctrl-C landing in
    # that moment was seen to be lost under load)
    assert len(proc.stdout.read(64)) == 64
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (err.decode(errors="replace")[-2000:], len(out), idle_queen.workers())
    assert b"Traceback" not in err
    deadline = time.monotonic() + 10
    while any(w["in_flight"] for w in idle_queen.workers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(w["in_flight"] == 0 for w in idle_queen.workers())
    assert [w["context_size"] for w in idle_queen.workers() if w["model"] == "endless-ctrl-c"] == [32768]
    idle_queen.cli("model", "set", "endless-ctrl-c", "--reset", check=True)


def test_engine_status_names_the_binary(idle_queen: Queen, llama_server: Path) -> None:
    result = idle_queen.cli("engine", "status", check=True)
    assert str(llama_server) in result.stdout and "configured" in result.stdout
    data = json.loads(idle_queen.cli("engine", "status", "--json", check=True).stdout)
    assert data[0]["hive"] == "localhost" and data[0]["version"]
    assert data[0]["speech"] == idle_queen.env.get("RBEE_WHISPER_SERVER")  # the suite's whisper-server, or none
    assert f"speech: {data[0]['speech'] or 'none'}" in result.stdout


def test_engine_install_of_whisper_uses_the_configured_one(idle_queen: Queen, whisper_server: Path) -> None:
    done = idle_queen.cli("engine", "install", "--engine", "whisper", check=True)
    assert f"whisper-server is configured: {whisper_server}" in done.stderr.replace("\n", "")
    wrong = idle_queen.cli("engine", "install", "--engine", "stable-diffusion")
    assert wrong.returncode != 0 and "--engine takes one of: llama, whisper" in wrong.stderr


def test_engine_install_job_uses_the_cached_build(idle_queen: Queen, llama_server: Path, rpc_server: Path,
                                                  tmp_path: Path) -> None:
    from rbee.hive.engine import build_id

    configured = idle_queen.cli("engine", "install", check=True)
    assert f"llama-server is configured: {llama_server}" in configured.stderr.replace("\n", "")
    idle_queen.cli("queen", "stop", check=True)

    engines = tmp_path / "engines"
    cached = engines / build_id("cpu") / "bin" / "llama-server"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(llama_server)
    (cached.parent / "ggml-rpc-server").symlink_to(rpc_server)  # a build is complete with both
    env = {"RBEE_ENGINES_DIR": str(engines), "RBEE_LLAMA_SERVER": "", "RBEE_RPC_SERVER": ""}
    idle_queen.env.update(env)
    result = idle_queen.cli("engine", "install", check=True)
    assert "already built" in result.stderr and str(cached) in result.stderr
    status = idle_queen.cli("engine", "status", check=True)
    assert str(cached) in status.stdout and "(built)" in status.stdout
    assert f"rpc: {cached.parent / 'ggml-rpc-server'}" in status.stdout.replace("\n", "")
    # A GPU build beside it becomes the default; the CPU build asked for by name is still found, not rebuilt.
    gpu = engines / build_id("vulkan") / "bin" / "llama-server"
    gpu.parent.mkdir(parents=True)
    gpu.symlink_to(llama_server)
    (gpu.parent / "ggml-rpc-server").symlink_to(rpc_server)
    again = idle_queen.cli("engine", "install", "--backend", "cpu", check=True)
    assert "already built" in again.stderr and str(cached) in again.stderr.replace("\n", "")


def test_a_backend_this_machine_cannot_build_names_what_is_missing(idle_queen: Queen, tmp_path: Path) -> None:
    no_toolkit = {"CUDA_HOME": str(tmp_path / "no-cuda"), "PATH": "/usr/bin:/bin"}
    for backend, missing in (("rocm", "needs hipcc"), ("cuda", "nvcc"), ("metal", "Apple Silicon")):
        result = idle_queen.cli("engine", "install", "--backend", backend, env=no_toolkit)
        assert result.returncode == 1, result.stderr
        assert f"cannot build llama-server for {backend}" in result.stderr and missing in result.stderr
        assert "Traceback" not in result.stderr
    unknown = idle_queen.cli("engine", "install", "--backend", "tpu")
    assert unknown.returncode != 0 and "--backend takes one of: cpu, metal, cuda" in unknown.stderr


def test_help_is_helpful() -> None:
    result = subprocess.run([sys.executable, "-m", "rbee", "--help"], capture_output=True, text=True, check=True)
    for command in ("infer", "status", "queen", "engine", "worker"):
        assert command in result.stdout
    version = subprocess.run([sys.executable, "-m", "rbee", "--version"], capture_output=True, text=True,
                             check=True)
    assert version.stdout.strip() == f"rbee {__version__}"


def test_queen_refuses_to_listen_beyond_loopback_without_keys(idle_queen: Queen) -> None:
    result = idle_queen.cli("queen", "start", "--foreground", "--host", "0.0.0.0")
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr and "API keys" in result.stderr


def test_hive_list_without_a_queen_shows_the_configured_machines(make_queen: Callable[..., Queen],
                                                                  tmp_path: Path) -> None:
    conf = tmp_path / "hives.conf"
    conf.write_text("Host gaming-pc\n    HostName 192.0.2.7\n    HivePort 7900\n")
    queen = make_queen(RBEE_HIVES_CONF=str(conf))
    result = queen.cli("hive", "list", "--json", check=True)
    rows = {row["alias"]: row for row in json.loads(result.stdout)}
    assert rows["gaming-pc"]["state"] == "not installed" and rows["gaming-pc"]["address"] == "192.0.2.7"
    assert rows["gaming-pc"]["port"] == 7900
    assert rows["localhost"]["state"] == "queen not running"
    assert _queen_not_started(queen)


def _queen_not_started(queen: Queen) -> bool:
    try:
        httpx.get(f"{queen.url}/health", timeout=1)
    except httpx.TransportError:
        return True
    return False
