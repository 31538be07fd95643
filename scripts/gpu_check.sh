#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build the CUDA engine, detect the devices, run a real inference on the
# GPU, and print what was seen. Exits non-zero when anything is wrong.
#
#   scripts/gpu_check.sh            # from a checkout; uses (or makes) .venv, like `make setup`
#
# Without the internet: run `python scripts/gpu_check_pack.py` where the package index is reachable and copy
# the .gpu-check/ folder it makes (wheels, the engine's source, a tiny model) into the GPU machine's checkout;
# the script then installs nothing from the network and answers with the tiny model.
#
# Needs: the NVIDIA driver (nvidia-smi), the CUDA toolkit with cuBLAS (nvcc), CMake and a C++ compiler,
# Python >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "GPU CHECK FAILED: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

step "the machine"
command -v nvidia-smi >/dev/null || fail "nvidia-smi is not on PATH: no NVIDIA driver here"
nvidia-smi --query-gpu=index,name,memory.total,memory.free,driver_version --format=csv
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || fail "nvcc (the CUDA toolkit) is missing"
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
[ "$gpus" -ge 1 ] || fail "nvidia-smi lists no GPU"
echo "nvcc: $(command -v nvcc || echo /usr/local/cuda/bin/nvcc) ($(nvcc --version 2>/dev/null | tail -1))"
echo "cuBLAS headers: $(timeout 60 find /usr /opt -name cublas_v2.h 2>/dev/null | head -3 | tr '\n' ' ')"
echo "libcuda: $(ldconfig -p 2>/dev/null | grep -m1 'libcuda.so' || echo 'not known to ldconfig')"

step "rbee"
export RBEE_HOME; RBEE_HOME=$(mktemp -d)
if [ -d .gpu-check/wheels ]; then  # packed by scripts/gpu_check_pack.py: nothing comes from the network
  site="$RBEE_HOME/site"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-index --no-deps \
    --no-compile --target "$site" .gpu-check/wheels/*.whl
  export PYTHONPATH="$site:$PWD"
  PY=python3
  RBEE="python3 -m rbee"
  mkdir -p "$RBEE_HOME/cache/src"
  cp .gpu-check/*.tar.gz "$RBEE_HOME/cache/src/"
  MODEL="$PWD/.gpu-check/tiny.gguf"
else
  make setup >/dev/null
  PY=.venv/bin/python
  RBEE=.venv/bin/rbee
  MODEL=smollm2-135m
fi
export MODEL
export RBEE_QUEEN_PORT=${RBEE_QUEEN_PORT:-7853}
unset RBEE_LLAMA_SERVER RBEE_ENGINE_BACKEND
trap '$RBEE queen stop >/dev/null 2>&1 || true; rm -rf "$RBEE_HOME"' EXIT

step "building the CUDA engine (cached by flags in \$RBEE_ENGINES_DIR, else under \$RBEE_HOME)"
$PY -c 'from rbee.hive import engine; print("auto-detected backend:", engine.detect_backend())'
$PY -c 'from rbee.hive import engine; print("CMake flags:", " ".join(engine.build_flags("cuda")))'
$PY -c 'from rbee.hive import engine; print("toolkit:", engine.missing_for("cuda") or "nvcc and cuBLAS found")'
[ "$($PY -c 'from rbee.hive import engine; print(engine.detect_backend())')" = cuda ] \
  || fail "rbee did not pick the CUDA backend on its own"
start=$(date +%s)
$RBEE engine install --local --backend cuda
echo "engine ready in $(( $(date +%s) - start )) s"
engine_path=$($PY -c 'from rbee.hive import engine; print(engine.built_binary("cuda"))')
[ -x "$engine_path" ] || fail "no CUDA llama-server at $engine_path"
"$engine_path" --list-devices | tee "$RBEE_HOME/list-devices.txt"
grep -q "^  CUDA0: " "$RBEE_HOME/list-devices.txt" || fail "the CUDA engine lists no CUDA0"

step "detection through the queen"
$RBEE queen start >/dev/null
$RBEE hive status localhost
$PY - <<'PY' || fail "detection"
import os, httpx
url = f"http://127.0.0.1:{os.environ['RBEE_QUEEN_PORT']}"
hive = next(h for h in httpx.get(f"{url}/v1/hives", timeout=30).json() if h["alias"] == "localhost")
gpus = [d for d in hive["devices"] if d["backend"] == "cuda"]
print("devices:", [(d["id"], d["name"], d["total_bytes"] >> 20, d["free_bytes"] and d["free_bytes"] >> 20,
                    d["utilization"], d["temperature_c"], d["failed"]) for d in hive["devices"]])
assert gpus, "no CUDA device detected"
assert all(d["total_bytes"] > 0 and not d["failed"] for d in gpus), "a CUDA device is failed or empty"
assert gpus[0]["temperature_c"] is not None, "NVML gave no live figures"
PY

step "a real inference on the GPU"
GPU_USED_BEFORE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | awk '{s += $1} END {print s}')
export GPU_USED_BEFORE
$RBEE infer -m "$MODEL" -p "Say hello in five words." --max-tokens 64
$PY - <<'PY' || fail "inference"
import os, subprocess, time, httpx
url = f"http://127.0.0.1:{os.environ['RBEE_QUEEN_PORT']}"
workers = httpx.get(f"{url}/v1/workers", timeout=30).json()
print("workers:", [(w["id"], w["model"], w["device"], w["state"]) for w in workers])
assert any(w["device"].startswith("cuda") and w["state"] == "ready" for w in workers), "no worker on a GPU"
started = time.monotonic()
r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
    "model": os.environ["MODEL"], "max_tokens": 256, "temperature": 0,
    "messages": [{"role": "user", "content": "Write a story."}]})
r.raise_for_status()
text = r.json()["choices"][0]["message"]["content"]
print("answer:", text[:120], "...")
if os.environ["MODEL"].endswith("tiny.gguf"):  # the test model's answers are known: every one starts "Hello"
    assert text.startswith("Hello "), "the GPU computed a different answer than the CPU does"
timings = r.json().get("timings", {})
print(f"256 tokens in {time.monotonic() - started:.2f} s; engine: {timings.get('predicted_per_second', 0):.0f} "
      "tokens/s generating")
# The GPUs' own figures: their memory in use grew by the worker's model, cache and CUDA context.
used = sum(int(n) for n in subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                          capture_output=True, text=True, check=True).stdout.split())
grew = used - int(os.environ["GPU_USED_BEFORE"])
print(f"GPU memory in use: {os.environ['GPU_USED_BEFORE']} MiB before the worker, {used} MiB with it (+{grew} MiB)")
estimated = sum(w.get("memory_bytes") or 0 for w in workers if w["device"].startswith("cuda")) >> 20
print(f"rbee's estimate for the worker: {estimated} MiB (the measured growth calibrates rbee/hive/estimate.py)")
assert grew >= 64, "the GPU's memory did not grow: the worker is not on the GPU"
apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"],
                      capture_output=True, text=True).stdout
print(apps)
if "llama-server" not in apps:  # some container runtimes hide processes from nvidia-smi
    print("note: nvidia-smi lists no llama-server process here (some container runtimes hide them); "
          "the memory figures above show the worker on the GPU")
PY

step "OK: CUDA engine built, $gpus GPU(s) detected, inference ran on the GPU"
