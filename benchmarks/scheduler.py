"""How long the scheduler takes to decide where a model goes, on a simulated cluster.

    python benchmarks/scheduler.py            # 100 hives x 8 devices, 500 workers (target <= 1 ms median)

Three cases: a model that fits somewhere at once, one that needs evictions, and one that must wait.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbee.queen.placement import DeviceView, WorkerView, place

GiB = 2**30


def cluster(hives: int, devices: int, workers: int, seed: int = 1) -> tuple[list[DeviceView], list[WorkerView]]:
    rng = random.Random(seed)
    devs = [DeviceView(f"hive{h}", f"gpu{d}", rng.choice([8, 12, 16, 24, 48, 80]) * GiB, rng.random() < 0.2)
            for h in range(hives) for d in range(devices)]
    ws = []
    for i in range(workers):
        d = rng.choice(devs)
        ws.append(WorkerView(f"w{i}", d.hive, d.device, int(rng.uniform(0.5, 6) * GiB), rng.choice([0, 0, 1, 3]),
                             rng.random() * 1000))
    return devs, ws


def measure(need: int, devs: list[DeviceView], ws: list[WorkerView], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        place(need, devs, ws)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hives", type=int, default=100)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    devs, ws = cluster(args.hives, args.devices, args.workers)
    full = [WorkerView(f"f{i}", d.hive, d.device, d.total, 1, 0.0) for i, d in enumerate(devs)]
    cases = [
        ("fits at once (4 GiB)", 4 * GiB, devs, ws),
        ("needs evictions (70 GiB)", 70 * GiB, devs, ws),
        ("must wait (every device busy)", 4 * GiB, devs, full),
    ]
    print(f"\nscheduler decision: {args.hives} hives x {args.devices} devices, {args.workers} workers, "
          f"{args.runs} runs each\n")
    print(f"{'case':32} | {'median':>9} | {'p99':>9}")
    print("-" * 33 + "|" + "-" * 11 + "|" + "-" * 10)
    for label, need, d, w in cases:
        times = sorted(measure(need, d, w, args.runs))
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        print(f"{label:32} | {statistics.median(times) * 1000:7.3f}ms | {p99 * 1000:7.3f}ms")


if __name__ == "__main__":
    main()
