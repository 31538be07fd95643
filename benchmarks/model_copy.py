"""A hive-to-hive model copy with rbee against `curl` of the same file over the same link, and a hub pull.

    sudo python benchmarks/model_copy.py [--mib 100] [--rounds 3] [--rate 1gbit]   # root: network namespaces

Two hosts on a bridge (tests/fixtures/lan.py). On h1: rbee's hive API (rbee/hive/app.py under uvicorn, with
a catalog holding a ~100 MiB GGUF) and python's http.server over the same folder. On h2, in turn (rounds
interleaved): an rbee copy (the share is opened with h1's join token, then rbee/hive/peer_fetch.py fetches,
checks sha256 and catalogues it), `curl -o` of the same file, and a pull of the same file from the fake hub
(in the root namespace, on the bridge). Each time is measured inside h2, from the first request to the file
being in place (rbee's includes its sha256 check). Target: rbee >= 0.9 x curl's throughput.
Never run by the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOIN = "benchmark-join-token"
PORT, HTTP_PORT = 7835, 8001
MODEL = "bench-copy"
REPO = "rbee-bench/copy-GGUF"


def _serve(folder: Path, address: str) -> None:
    """On h1: the hive API with the model in its catalog (the file is shared by path)."""
    import uvicorn

    from rbee.hive.app import create_app
    from rbee.hive.config import HiveConfig
    from rbee.hive.service import Hive

    hive = Hive("h1", state=folder / "state-h1", address=address)
    asyncio.run(hive.catalog.add_file(folder / "model.gguf", MODEL))
    app = create_app(HiveConfig(alias="h1", queen_url="http://127.0.0.1:9", token=JOIN, address=address), hive)
    uvicorn.run(app, host=address, port=PORT, log_level="warning", lifespan="off")


async def _copy(folder: Path, source: str, me: str) -> float:
    """On h2: one rbee copy; seconds from the share to the catalogued file."""
    import httpx

    from rbee.contracts.copies import HiveFetch, ShareOpen, ShareOpened
    from rbee.hive.service import Hive

    url = f"http://{source}:{PORT}"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {JOIN}"}) as client:
        raw = await client.post(f"{url}/v1/hive/shares", content=ShareOpen(model=MODEL, peer_address=me)
                                .model_dump_json(), timeout=120)
    share = ShareOpened.model_validate_json(raw.content)  # opening it hashes the file once on h1: not timed
    hive = Hive("h2", state=Path(tempfile.mkdtemp(dir=folder)))
    asked = HiveFetch(source="h1", source_url=url, share_id=share.share_id, token=share.token,
                      entry=share.entry, files=share.files)
    started = time.perf_counter()
    await hive.copy_in(asked, lambda *a, **k: None)
    return time.perf_counter() - started


async def _pull(folder: Path) -> float:
    from rbee.hive.service import Hive

    hive = Hive("h2", state=Path(tempfile.mkdtemp(dir=folder)))
    started = time.perf_counter()
    await hive.pull(f"{REPO}:Q4_K_M", lambda *a, **k: None)
    return time.perf_counter() - started


def _in(netns: str, *argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})}).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default=None, help="shape the link into h2, e.g. 1gbit (a real LAN); "
                        "default: the veth's own speed, bounded by the CPU")
    args = parser.parse_args()

    from tests.fixtures.fake_hub import FakeHub
    from tests.fixtures.lan import lan_hosts
    from tests.fixtures.tiny_gguf import write_tiny_model

    work = Path(tempfile.mkdtemp(prefix="rbee-bench-copy-", dir="/var/tmp"))
    src, dst = work / "h1", work / "h2"
    src.mkdir()
    dst.mkdir()
    model = write_tiny_model(src / "model.gguf")
    payload = model.read_bytes()
    payload += os.urandom(args.mib * 2**20 - len(payload))
    model.write_bytes(payload)
    me = [sys.executable, str(Path(__file__).resolve())]
    with lan_hosts(2, work / "lan") as lan, FakeHub().start(lan.gateway) as hub:
        h1, h2 = lan.hosts
        if args.rate:  # everything to h2 (from h1 over the bridge, and from the hub) leaves by its veth
            subprocess.run(["tc", "qdisc", "add", "dev", h2.veth, "root", "tbf", "rate", args.rate, "burst", "1mb",
                            "latency", "50ms"], check=True)
        hub.add_repo(REPO, {"m-Q4_K_M.gguf": payload})
        servers = [subprocess.Popen(["ip", "netns", "exec", h1.netns, *me, "--role", "serve", str(src), h1.address]),
                   subprocess.Popen(["ip", "netns", "exec", h1.netns, sys.executable, "-m", "http.server",
                                     str(HTTP_PORT), "--bind", h1.address, "--directory", str(src)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            _in(h2.netns, "curl", "-sf", "--retry", "50", "--retry-connrefused", "--retry-delay", "0", "-o",
                "/dev/null", "-H", f"Authorization: Bearer {JOIN}", f"http://{h1.address}:{PORT}/v1/hive/report")
            _in(h2.netns, "curl", "-sf", "--retry", "50", "--retry-connrefused", "--retry-delay", "0", "-o",
                "/dev/null", "-r", "0-0", f"http://{h1.address}:{HTTP_PORT}/model.gguf")
            times: dict[str, list[float]] = {"rbee copy": [], "curl": [], "hub pull": []}
            for _ in range(args.rounds):
                out = dst / "round"
                times["rbee copy"].append(float(_in(h2.netns, *me, "--role", "copy", str(dst), h1.address, h2.address,
                                                    env={"RBEE_MODELS_DIR": str(out / "rbee")})))
                curl = _in(h2.netns, "curl", "-sf", "-o", str(out / "curl.gguf"), "-w", "%{time_total}",
                           f"http://{h1.address}:{HTTP_PORT}/model.gguf")
                times["curl"].append(float(curl))
                times["hub pull"].append(float(_in(h2.netns, *me, "--role", "pull", str(dst), env={
                    "RBEE_MODELS_DIR": str(out / "hub"), "HF_ENDPOINT": hub.url, "HF_HOME": str(out / "hf")})))
                subprocess.run(["rm", "-rf", str(out)], check=True)
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    mib = len(payload) / 2**20
    curl_best = min(times["curl"])
    link = f"a link shaped to {args.rate}" if args.rate else "an unshaped veth link"
    print(f"{mib:.0f} MiB from h1 to h2 over {link}, {args.rounds} rounds interleaved (best / median seconds)")
    print(f"{'how':<10} {'best s':>8} {'median s':>9} {'MiB/s':>8} {'vs curl':>8}")
    for name, values in times.items():
        best = min(values)
        print(f"{name:<10} {best:8.3f} {statistics.median(values):9.3f} {mib / best:8.1f} {curl_best / best:8.2f}")
    print(json.dumps({k: [round(v, 4) for v in vs] for k, vs in times.items()}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, folder = sys.argv[2], Path(sys.argv[3])
        if role == "serve":
            _serve(folder, sys.argv[4])
        elif role == "copy":
            print(asyncio.run(_copy(folder, sys.argv[4], sys.argv[5])))
        else:
            print(asyncio.run(_pull(folder)))
    else:
        main()
