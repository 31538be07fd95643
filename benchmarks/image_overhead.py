"""What the queen adds to an image: the same sd-server worker, asked directly and through the queen.

Prints a table of request time (median, p99) for one image, interleaved between the two paths, and the
difference: the queen's checking of the request, rewriting it for sd-server, routing, and forwarding the PNGs
(base64 in JSON) back. The model is the generated test model (tests/fixtures/tiny_sd.py) at one step without
guidance, so the engine's own time is as small as it gets; it is still seconds on a CPU, so the difference is
small against the noise of the engine's own time.

    python benchmarks/image_overhead.py [--requests 10] [--size 64x64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.proxy_overhead import request_rows, running_queen  # noqa: E402
from rbee.contracts.openai import ImageRequest  # noqa: E402
from rbee.hive import engine  # noqa: E402
from rbee.hive.engine_sources import SD  # noqa: E402
from rbee.queen.image_routes import engine_body  # noqa: E402
from tests.fixtures.tiny_sd import write_tiny_sd  # noqa: E402


def timed(client: httpx.Client, url: str, **kwargs: Any) -> float:
    started = time.perf_counter()
    resp = client.post(url, **kwargs)
    resp.raise_for_status()
    return time.perf_counter() - started


def measure(queen: str, model: str, size: str, requests: int) -> list[tuple[str, str, str, str]]:
    asked = {"model": model, "prompt": "a bee", "size": size, "seed": 1, "steps": 1, "cfg_scale": 1.0}
    with httpx.Client(timeout=600) as client:
        client.post(f"{queen}/v1/images/generations", json=asked).raise_for_status()  # loads the worker
        worker = next(w for w in client.get(f"{queen}/v1/workers").json() if w["mode"] == "image")
        direct = engine_body(ImageRequest.model_validate({**asked, "model": worker["model"]}))
        paths = {"direct": (f"{worker['url']}/v1/images/generations", {"content": direct}),
                 "queen": (f"{queen}/v1/images/generations", {"json": {**asked, "model": worker["model"]}})}
        took: dict[str, list[float]] = {"direct": [], "queen": []}
        for _ in range(requests):  # interleaved, so drift hits both paths alike
            for name, (url, kwargs) in paths.items():
                took[name].append(timed(client, url, **kwargs))
    return request_rows(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10, help="samples per path")
    parser.add_argument("--size", default="64x64", help="the image's WIDTHxHEIGHT")
    args = parser.parse_args()
    llama, sd = engine.locate(), engine.locate(SD)
    if llama is None or sd is None:
        sys.exit("run `rbee engine install` and `rbee engine install --engine sd` first")
    model = str(write_tiny_sd())
    with tempfile.TemporaryDirectory() as tmp:
        env = {"RBEE_HOME": tmp, "RBEE_LLAMA_SERVER": str(llama[0]), "RBEE_SD_SERVER": str(sd[0]),
               "RBEE_WORKER_THREADS": "2"}
        with running_queen(env) as queen:
            rows = measure(queen, model, args.size, args.requests)
    print(f"\nimage overhead: {args.requests} requests per path, one {args.size} image, {os.cpu_count()} cores\n")
    header = ("metric", "direct", "via queen", "queen vs direct")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
