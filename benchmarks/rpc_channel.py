"""What rbee's RPC channel (rbee/hive/rpc_channel.py) costs against a plain TCP connection.

The same echo server (tests/fixtures/echo_server.py, standing in for rpc-server) is reached directly on
127.0.0.1 ("plain"), and through a channel ("channel": a dial end and a listen end, each in its own process
as on two hives, uvloop when installed as the hive runs, mutual TLS 1.3 over this machine's LAN address).
Rounds are interleaved (plain, channel, channel, plain, ...). Prints the round-trip time of small messages
(64 B and 4 KiB ping-pong: RPC is latency-bound) and the throughput of a 64 MiB bulk echo.

When an `rpc-server` is found (RBEE_RPC_SERVER, or beside llama-server in rbee's engine cache) it adds a row:
llama-server `--rpc` over the channel against `--rpc` straight to rpc-server on loopback, tokens/s of the
generated tiny model (target in issue #21: the channel costs <= 5 % of tokens/s).

    python benchmarks/rpc_channel.py [--rounds 5] [--pings 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
from pydantic import SecretStr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rbee.common import paths, tls_ca  # noqa: E402
from rbee.contracts.spreads import ChannelOpen  # noqa: E402
from rbee.hive import engine  # noqa: E402
from rbee.hive.rpc_channel import Channels  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

MIB = 1 << 20


def lan_address() -> str:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    sys.exit("a channel runs between machines: this one has no LAN address to run it on")


def run_end() -> None:
    """`--end`: one end of a channel (the ChannelOpen on stdin), printing its port, until killed."""
    asked = ChannelOpen.model_validate_json(sys.stdin.read())

    async def always(port: int) -> bool:
        return True  # the benchmark's echo server is not this process's child

    async def serve() -> None:
        logging.basicConfig(level=logging.INFO, format="end: %(message)s")
        channels = Channels(lan_address(), target_check=always)
        print((await channels.open(asked)).port, flush=True)
        await asyncio.Event().wait()

    try:
        if os.environ.get("RBEE_BENCH_LOOP") == "asyncio":
            raise ImportError
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


@contextlib.contextmanager
def process(argv: list[str], stdin: str | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@contextlib.contextmanager
def channel_to(target: int) -> Iterator[int]:
    """A dial end and a listen end (two processes) in front of 127.0.0.1:`target`; the dial end's port."""
    lan = lan_address()
    helper, main = tls_ca.channel_pair("bench", "helper"), tls_ca.channel_pair("bench", "main")
    listen = ChannelOpen(role="listen", spread="bench", certificate=helper[0].decode(),
                         key=SecretStr(helper[1].decode()), peer_certificate=main[0].decode(), peer_address=lan,
                         target_port=target)
    with process([sys.executable, __file__, "--end"], listen.model_dump_json()) as listener:
        dial = ChannelOpen(role="dial", spread="bench", certificate=main[0].decode(), key=SecretStr(main[1].decode()),
                           peer_certificate=helper[0].decode(), peer_address=lan, peer_port=int(first_line(listener)))
        with process([sys.executable, __file__, "--end"], dial.model_dump_json()) as dialer:
            yield int(first_line(dialer))


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ping_pong(port: int, size: int, count: int) -> list[float]:
    """Round-trip times (s) of `count` messages of `size` bytes, each echoed before the next is sent."""
    message, buffer = os.urandom(size), bytearray(size)
    view, times = memoryview(buffer), []
    with connect(port) as sock:
        for i in range(count + 50):  # the first 50 warm up
            started = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if not n:
                    raise ConnectionError("the connection ended mid-message")
                got += n
            if i >= 50:
                times.append(time.perf_counter() - started)
    assert bytes(buffer) == message
    return times


def bulk(port: int, total: int) -> float:
    """MB/s of sending `total` bytes and reading them back at the same time."""
    chunk = os.urandom(MIB)
    buffer = memoryview(bytearray(MIB))
    with connect(port) as sock:
        def send() -> None:
            for _ in range(total // MIB):
                sock.sendall(chunk)
        started = time.perf_counter()
        sender = threading.Thread(target=send)
        sender.start()
        got = 0
        while got < total:
            n = sock.recv_into(buffer)
            if not n:
                raise ConnectionError(f"the connection ended after {got} of {total} bytes")
            got += n
        sender.join()
        return total / (time.perf_counter() - started) / 1e6


def rpc_server() -> Path | None:
    given = os.environ.get("RBEE_RPC_SERVER")
    if given:
        return Path(given)
    found = engine.locate()
    candidates = [found[0].parent / "rpc-server"] if found else []
    candidates += sorted(paths.engines_dir().glob("*/bin/rpc-server"))
    return next((c for c in candidates if c.is_file()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tokens_per_s(llama_server: Path, model: Path, rpc_port: int, tokens: int) -> float:
    """llama-server with its layers on the rpc-server behind 127.0.0.1:`rpc_port`: generation tokens/s."""
    port = free_port()
    argv = [str(llama_server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", "1", "-np", "1",
            "-c", "1024", "-ngl", "99", "--rpc", f"127.0.0.1:{rpc_port}"]
    with process(argv), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    break
            time.sleep(0.1)
        answer = client.post("/completion", json={"prompt": "Once upon a time", "n_predict": tokens,
                                                  "temperature": 0, "seed": 1}).json()
        return float(answer["timings"]["predicted_per_second"])


def table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--bulk-mib", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[float]] = {}
    with process([sys.executable, "-m", "tests.fixtures.echo_server"]) as echo:
        echo_port = int(first_line(echo).split()[1])
        with channel_to(echo_port) as dial_port:
            ports = {"plain": echo_port, "channel": dial_port}
            for r in range(args.rounds):
                for path in (("plain", "channel") if r % 2 == 0 else ("channel", "plain")):
                    for size in (64, 4096):
                        samples.setdefault((f"{size} B", path), []).extend(ping_pong(ports[path], size, args.pings))
                    samples.setdefault(("bulk", path), []).append(bulk(ports[path], args.bulk_mib * MIB))
    rows = [("what", "plain", "channel", "cost")]
    for label in ("64 B", "4096 B"):
        for name, pick in (("median", statistics.median), ("p99", lambda xs: statistics.quantiles(xs, n=100)[98])):
            plain, chan = (pick(samples[(label, p)]) * 1e6 for p in ("plain", "channel"))
            rows.append((f"{label} round trip {name} (us)", f"{plain:.0f}", f"{chan:.0f}", f"+{chan - plain:.0f} us"))
    plain, chan = (statistics.median(samples[("bulk", p)]) for p in ("plain", "channel"))
    rows.append((f"{args.bulk_mib} MiB echo (MB/s)", f"{plain:.0f}", f"{chan:.0f}",
                 f"{100 * (1 - chan / plain):.1f} %"))
    rows += llama_rows(args.rounds, args.tokens)
    table(rows)


def llama_rows(rounds: int, tokens: int) -> list[tuple[str, str, str, str]]:
    server, found = rpc_server(), engine.locate()
    if server is None or found is None:
        print("(no rpc-server found: set RBEE_RPC_SERVER for the llama-server --rpc row)", file=sys.stderr)
        return []
    rates: dict[str, list[float]] = {"plain": [], "channel": []}
    with tempfile.TemporaryDirectory() as folder:
        model = write_tiny_model(Path(folder) / "tiny.gguf")
        port = free_port()
        with process([str(server), "-H", "127.0.0.1", "-p", str(port)]), channel_to(port) as dial_port:
            time.sleep(1.0)  # rpc-server prints nothing we can wait for on every version; a benchmark may wait
            for r in range(rounds):
                for path in (("plain", "channel") if r % 2 == 0 else ("channel", "plain")):
                    rates[path].append(tokens_per_s(found[0], model, port if path == "plain" else dial_port, tokens))
    plain, chan = (statistics.median(rates[p]) for p in ("plain", "channel"))
    return [("llama-server --rpc, tiny model (tokens/s)", f"{plain:.0f}", f"{chan:.0f}",
             f"{100 * (1 - chan / plain):.1f} %")]


if __name__ == "__main__":
    run_end() if sys.argv[1:] == ["--end"] else main()
