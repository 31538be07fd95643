"""A helper that lends two devices: one rpc-server serving both (what rbee runs) against one rpc-server each.

    one   ggml-rpc-server -d CPU,CPU; llama-server --rpc P --device RPC0,RPC1 --tensor-split 1,1
    two   two ggml-rpc-servers (one CPU device each); llama-server --rpc P1,P2 --device RPC0,RPC1 --tensor-split 1,1

Every layer is on the two RPC devices; llama-server reaches them through a relay in this script that counts
the bytes each way, as a helper's link would carry them: for the load (the weights) and for the answer.
Rounds are interleaved (one, two, then rotated); each starts llama-server afresh and asks for `--tokens`
tokens greedily, streamed: tokens/s is llama-server's own, time to first token this client's. With two
rpc-servers a tensor that moves from the first device to the second crosses the link twice (to the main
hive, then back); with one it stays on the helper (ggml-rpc.cpp RPC_CMD_COPY_TENSOR). All on this machine:
loopback, so the bytes are the point, not the times.

    python benchmarks/rpc_devices.py [--rounds 3] [--tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rpc_channel import free_port, process, table  # noqa: E402
from benchmarks.rpc_span import PROMPT, healthy, the_model  # noqa: E402
from rbee.hive import engine  # noqa: E402


class Relay:
    """127.0.0.1:`port` -> 127.0.0.1:`target`, in a thread of its own, counting the bytes that cross it."""

    def __init__(self, target: int) -> None:
        self.target, self.port, self.bytes = target, free_port(), 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(1 << 16):
                self.bytes += len(chunk)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


@contextlib.contextmanager
def rpc_servers(server: Path, devices: list[str], threads: int) -> Iterator[list[Relay]]:
    """The rpc-servers lending `devices` (each entry one server's -d), each behind a counting relay."""
    ports = [free_port() for _ in devices]
    with contextlib.ExitStack() as stack:
        for port, d in zip(ports, devices, strict=True):
            stack.enter_context(process([str(server), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads),
                                         "-d", d]))
        time.sleep(1.0)  # rpc-server prints nothing to wait for on every version; a benchmark may wait
        yield [Relay(port) for port in ports]


def run(llama_server: Path, model: Path, relays: list[Relay], tokens: int, threads: int) -> tuple[float, ...]:
    """(tokens/s, TTFT ms, bytes over the helper's relays for the load, then for the answer) of one fresh
    llama-server."""
    port = free_port()
    argv = [str(llama_server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-np", "1", "-c", "2048", "--no-webui", "--rpc", ",".join(f"127.0.0.1:{r.port}" for r in relays),
            "--device", "RPC0,RPC1", "--tensor-split", "1,1", "-ngl", "999"]
    start = sum(r.bytes for r in relays)
    with process(argv), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
        healthy(client)
        loaded = sum(r.bytes for r in relays)
        body = {"prompt": PROMPT, "n_predict": tokens, "temperature": 0, "seed": 1, "stream": True,
                "cache_prompt": False}
        started, first, last = time.perf_counter(), None, {}
        with client.stream("POST", "/completion", json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    first = first or (time.perf_counter() if event.get("content") else None)
                    last = event
        assert first is not None, "no token came"
        answered = sum(r.bytes for r in relays)
    return (float(last["timings"]["predicted_per_second"]), (first - started) * 1000, loaded - start,
            answered - loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    found, server = engine.locate(), engine.rpc_server()
    if found is None or server is None:
        sys.exit("needs llama-server and ggml-rpc-server: `rbee engine install --force` builds both")
    samples: dict[str, list[tuple[float, ...]]] = {"one": [], "two": []}
    with the_model() as model, rpc_servers(server, ["CPU,CPU"], args.threads) as one, \
            rpc_servers(server, ["CPU", "CPU"], args.threads) as two:
        for r in range(args.rounds):
            for path in (["one", "two"] if r % 2 == 0 else ["two", "one"]):
                samples[path].append(run(found[0], model, one if path == "one" else two, args.tokens, args.threads))
        print(f"model {model.name}, {args.tokens} tokens, {args.rounds} rounds (medians)")
    rows = [("rpc-servers", "tokens/s", "TTFT ms", "MB on the helper's link: load / answer")]
    for path in ("one", "two"):
        rate, ttft, load, answer = (statistics.median(s[i] for s in samples[path]) for i in range(4))
        rows.append((path, f"{rate:.1f}", f"{ttft:.0f}", f"{load / 1e6:.1f} / {answer / 1e6:.2f}"))
    table(rows)


if __name__ == "__main__":
    main()
