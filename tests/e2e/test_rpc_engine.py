"""llama.cpp's RPC backend in rbee's engine build (issue 21 point 4): `ggml-rpc-server` is built beside
`llama-server` with the same flags, and a real llama-server given `--rpc` runs the tiny model's layers on a
real RPC server on loopback and answers. The base that spreads across hives build on."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.hive import engine
from tests.conftest import free_port, wait_for


def _started(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):  # by the handle each was started with; llama-server before its RPC server
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_engine_build_has_the_rpc_server_beside_llama_server(llama_server: Path, rpc_server: Path) -> None:
    found = engine.locate()
    if found is not None and found[1] == "built":  # rbee's own build: one cache entry holds both
        assert rpc_server == llama_server.parent / "ggml-rpc-server" and engine.builds()
    helped = subprocess.run([str(rpc_server), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--host HOST" in helped.stderr and "--port PORT" in helped.stderr
    refused = subprocess.run([str(rpc_server), "--nonsense"], capture_output=True, text=True, timeout=30)
    assert "unknown argument: --nonsense" in refused.stderr  # (its exit code is 0 even so: llama.cpp's choice)


def test_llama_server_answers_with_its_layers_on_an_rpc_server(llama_server: Path, rpc_server: Path,
                                                              tiny_model: Path, tmp_path: Path,
                                                              procs: list[subprocess.Popen[bytes]]) -> None:
    rpc_port, port = free_port(), free_port()
    rpc_log, server_log = tmp_path / "rpc.log", tmp_path / "server.log"
    procs.append(_started([str(rpc_server), "-H", "127.0.0.1", "-p", str(rpc_port), "-t", "1"], rpc_log))
    rpc = psutil.Process(procs[-1].pid)  # its stdout is buffered in a file: wait for its socket, untouched

    def listening() -> bool:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == rpc_port for c in rpc.net_connections())

    assert wait_for(listening, 60), rpc_log.read_text()
    listed = subprocess.run([str(llama_server), "--rpc", f"127.0.0.1:{rpc_port}", "--list-devices"],
                            capture_output=True, text=True, timeout=60)
    assert f"RPC0: 127.0.0.1:{rpc_port}" in listed.stdout + listed.stderr, listed.stdout + listed.stderr
    procs.append(_started([str(llama_server), "--model", str(tiny_model), "--host", "127.0.0.1", "--port", str(port),
                           "--rpc", f"127.0.0.1:{rpc_port}", "--device", "RPC0", "--n-gpu-layers", "999",
                           "--ctx-size", "256", "--no-webui", "-lv", "4"], server_log))

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return procs[-1].poll() is not None  # it died: stop waiting, the assertion below says why

    assert wait_for(healthy, 120) and procs[-1].poll() is None, server_log.read_text()[-3000:]
    answer = httpx.post(f"http://127.0.0.1:{port}/completion", timeout=60,
                        json={"prompt": "hello", "n_predict": 4, "temperature": 0, "seed": 1})
    assert answer.status_code == 200 and answer.json()["tokens_predicted"] == 4, answer.text
    said = server_log.read_text()  # the model's layers, the output layer among them, went to the RPC device
    assert "offloaded 3/3 layers to GPU" in said and f"RPC0[127.0.0.1:{rpc_port}] model buffer size" in said, said
    assert any(c.status == psutil.CONN_ESTABLISHED for c in rpc.net_connections())  # llama-server's link to it
