"""The queen's memory idle and after one chat request (issue 20: "idle RSS <= 50 MB").

Each run starts a queen in an empty RBEE_HOME (`RBEE_WORKER_THREADS=1 rbee queen start --foreground`), reads its
VmRSS 2 s after /health answers (and its RssAnon: the private part, which does not count the shared libraries'
pages the process happens to map), sends one chat request (`max_tokens` 4, the generated tiny model) and reads
VmRSS again 2 s later; then one with `keep_alive: 0`, whose worker unloads and saves its slot, and VmRSS 2 s after
the unload; then `python -c "import rbee.queen.server"` gives its RSS and module count. It measures the
checkout it runs from: to compare two versions, run it from a worktree of each, in turns.

    python benchmarks/idle_rss.py --runs 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.agent_turns import _idle  # noqa: E402
from benchmarks.proxy_overhead import _print_table, running_queen  # noqa: E402
from rbee.hive import engine  # noqa: E402
from tests.fixtures.tiny_gguf import write_tiny_model  # noqa: E402

SETTLE_S = 2.0  # after /health, and after the chat request, before VmRSS is read
IMPORT = ("import sys, rbee.queen.server\n"
          "rss = next(line for line in open('/proc/self/status') if line.startswith('VmRSS:')).split()[1]\n"
          "print(rss, len(sys.modules))")


def status_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory line of /proc/PID/status, in MiB."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024  # /proc counts KiB


def one_run(llama_server: Path) -> tuple[float, float, float, float]:
    """(idle, idle private, after one chat, after an unload) memory of a fresh queen, in MiB: VmRSS, RssAnon,
    VmRSS, VmRSS."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as home:
        model = write_tiny_model(Path(home) / "tiny.gguf")
        env = {"RBEE_HOME": home, "RBEE_WORKER_THREADS": "1", "RBEE_LLAMA_SERVER": str(llama_server)}
        with running_queen(env) as queen:
            pid = next(p.pid for p in psutil.Process().children() if "queen" in p.cmdline())
            time.sleep(SETTLE_S)
            idle, private = status_mb(pid), status_mb(pid, "RssAnon")
            body = {"model": str(model), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            httpx.post(f"{queen}/v1/chat/completions", json=body, timeout=120).raise_for_status()
            time.sleep(SETTLE_S)
            after = status_mb(pid)
            httpx.post(f"{queen}/v1/chat/completions", json={**body, "keep_alive": 0}, timeout=120).raise_for_status()
            _idle(queen, saves=0)  # the worker gone, its slot saved
            time.sleep(SETTLE_S)
            return idle, private, after, status_mb(pid)


def import_only() -> tuple[float, int]:
    """RSS (MiB) and module count of a fresh interpreter that imported the queen's server."""
    done = subprocess.run([sys.executable, "-c", IMPORT], cwd=REPO, capture_output=True, text=True, check=True)
    rss, modules = done.stdout.split()
    return int(rss) / 1024, int(modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="queens started, one after another (default 3)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be positive")
    found = engine.locate()
    if found is None:
        sys.exit("no llama-server: run `rbee engine install` first")
    runs = [one_run(found[0]) for _ in range(args.runs)]
    imports = [import_only() for _ in range(args.runs)]
    _print_table(f"queen RSS, {REPO}", [
        ("idle queen RSS (MiB)", " / ".join(f"{run[0]:.1f}" for run in runs)),
        ("  of it private, RssAnon (MiB)", " / ".join(f"{run[1]:.1f}" for run in runs)),
        ("2 s after one chat request (MiB)", " / ".join(f"{run[2]:.1f}" for run in runs)),
        ("2 s after an unload that saved its slot (MiB)", " / ".join(f"{run[3]:.1f}" for run in runs)),
        ('python -c "import rbee.queen.server" (MiB)', " / ".join(f"{rss:.1f}" for rss, _ in imports)),
        ("  modules", " / ".join(str(n) for _, n in imports)),
    ], ("measure", "runs"))


if __name__ == "__main__":
    main()
