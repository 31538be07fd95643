"""What the queen adds to a transcription: the same whisper-server worker, asked directly and through the queen.

Prints a table of request time (median, p99) for one upload of a WAV, interleaved between the two paths, and
the difference: the queen's reading and checking of the multipart form, routing and forwarding. The model
is the generated test model (tests/fixtures/tiny_whisper.py), so the engine's own time is small and steady.

    python benchmarks/audio_overhead.py [--requests 20] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.proxy_overhead import request_rows, running_queen  # noqa: E402
from rbee.hive import engine  # noqa: E402
from rbee.hive.engine_sources import WHISPER  # noqa: E402
from tests.e2e.test_audio import tone_wav  # noqa: E402
from tests.fixtures.tiny_whisper import write_tiny_whisper  # noqa: E402


def timed(client: httpx.Client, url: str, fields: dict[str, str], wav: bytes) -> float:
    started = time.perf_counter()
    resp = client.post(url, data=fields, files={"file": ("a.wav", wav)})
    resp.raise_for_status()
    return time.perf_counter() - started


def measure(queen: str, model: str, wav: bytes, requests: int) -> list[tuple[str, str, str, str]]:
    with httpx.Client(timeout=300) as client:
        warm = client.post(f"{queen}/v1/audio/transcriptions", data={"model": model}, files={"file": ("a.wav", wav)})
        warm.raise_for_status()
        worker = next(w for w in client.get(f"{queen}/v1/workers").json() if w["mode"] == "transcribe")
        paths = {"direct": (f"{worker['url']}/inference", {}),
                 "queen": (f"{queen}/v1/audio/transcriptions", {"model": worker["model"]})}
        took: dict[str, list[float]] = {"direct": [], "queen": []}
        for _ in range(requests):  # interleaved, so drift hits both paths alike
            for name, (url, fields) in paths.items():
                took[name].append(timed(client, url, fields, wav))
    return request_rows(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="samples per path")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the WAV uploaded")
    args = parser.parse_args()
    llama, whisper = engine.locate(), engine.locate(WHISPER)
    if llama is None or whisper is None:
        sys.exit("run `rbee engine install` and `rbee engine install --engine whisper` first")
    wav = tone_wav(args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(write_tiny_whisper(Path(tmp) / "ggml-bench.bin"))
        env = {"RBEE_HOME": tmp, "RBEE_LLAMA_SERVER": str(llama[0]), "RBEE_WHISPER_SERVER": str(whisper[0]),
               "RBEE_WORKER_THREADS": "1"}
        with running_queen(env) as queen:
            rows = measure(queen, model, wav, args.requests)
    print(f"\ntranscription overhead: {args.requests} requests per path, a {args.seconds:g} s WAV "
          f"({len(wav)} bytes), {os.cpu_count()} cores\n")
    header = ("metric", "direct", "via queen", "queen vs direct")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
