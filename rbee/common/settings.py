"""Settings read from the environment, with the defaults a user expects."""

from __future__ import annotations

import os
import re
from pathlib import Path

from rbee.common import paths

DEFAULT_QUEEN_HOST = "127.0.0.1"
DEFAULT_QUEEN_PORT = 7833
DEFAULT_CONTEXT = 4096  # for a model whose header names no trained context
DEFAULT_MAX_CONTEXT = 32768  # agent CLIs (Claude Code, Codex) send 4-5k tokens before the user types a word
DEFAULT_SLOTS = 4
MIN_MAX_CONTEXT = 256


class SettingsError(ValueError):
    """An environment variable holds a value rbee cannot use; the message names it."""


def env_int(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(f"{name}={raw!r} must be {bounds}")
    return value


def queen_port() -> int:
    return env_int("RBEE_QUEEN_PORT", DEFAULT_QUEEN_PORT, 1, 65535)


def ollama_port() -> int | None:
    """RBEE_OLLAMA_PORT: a second port on which the queen also serves the Ollama API (and `/`), for clients that
    only know Ollama's address (its own is 11434). Unset (default): none."""
    if not os.environ.get("RBEE_OLLAMA_PORT", "").strip():
        return None
    return env_int("RBEE_OLLAMA_PORT", 0, 1, 65535)


def queen_host() -> str:
    return os.environ.get("RBEE_QUEEN_HOST", DEFAULT_QUEEN_HOST)


def queen_tls() -> bool:
    """Whether the queen speaks HTTPS: RBEE_TLS_CERT is set, or `rbee tls init` made its certificate."""
    return bool(os.environ.get("RBEE_TLS_CERT")) or (paths.tls_dir() / "queen.pem").is_file()


def queen_url() -> str:
    scheme = "https" if queen_tls() else "http"
    return os.environ.get("RBEE_QUEEN_URL") or f"{scheme}://{queen_host()}:{queen_port()}"


def worker_threads() -> int | None:
    """Threads per worker (`-t`); None lets llama-server decide."""
    value = env_int("RBEE_WORKER_THREADS", 0, minimum=0)
    return value or None


def worker_cache_ram_mib() -> int:
    """MiB of host memory each text worker may fill with old prompts' KV state (llama-server's `--cache-ram`;
    RBEE_WORKER_CACHE_RAM_MIB, default 0: off). llama-server's own default is 8192 MiB per worker, which no
    memory estimate would see; a worker's estimate counts what this allows (rbee/hive/estimate.py)."""
    return env_int("RBEE_WORKER_CACHE_RAM_MIB", 0, minimum=0, maximum=1 << 20)


def worker_context() -> int | None:
    """Context tokens per slot, when RBEE_WORKER_CONTEXT sets it; None: sized per model (see `max_context`)."""
    value = env_int("RBEE_WORKER_CONTEXT", 0, minimum=0)
    if 0 < value < 16:
        raise SettingsError(f"RBEE_WORKER_CONTEXT={value} must be at least 16 tokens (or 0: sized per model)")
    return value or None


def max_context() -> int:
    """The largest context per slot rbee gives a model's workers by itself (RBEE_WORKER_MAX_CONTEXT): its trained
    context, at most this much, and less where memory is short. A longer prompt gets a worker with more, up to
    the trained context (rbee/queen/context_fit.py)."""
    return env_int("RBEE_WORKER_MAX_CONTEXT", DEFAULT_MAX_CONTEXT, minimum=MIN_MAX_CONTEXT)


def models_dir() -> Path:
    """Where pulled models are kept."""
    override = os.environ.get("RBEE_MODELS_DIR")
    return Path(override).expanduser() if override else paths.data_dir() / "models"


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """`"512MiB"`, `"2GB"`, `"1000000"` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise SettingsError(f"{text!r} is not a size like 512MiB or 2GB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def memory_budget() -> int | None:
    """RBEE_MEMORY_BUDGET: how much memory the local hive may give workers (default: all of RAM)."""
    raw = os.environ.get("RBEE_MEMORY_BUDGET")
    if not raw:
        return None
    try:
        return parse_size(raw)
    except SettingsError as exc:
        raise SettingsError(f"RBEE_MEMORY_BUDGET: {exc}") from None


def keep_alive_default() -> str:
    return os.environ.get("RBEE_KEEP_ALIVE") or "5m"


def key_max_keep_alive() -> str:
    """The longest `keep_alive` a request may ask for without admin rights (an API key, or a keyless local
    user that is not the queen's own); negative: no bound."""
    return os.environ.get("RBEE_KEY_MAX_KEEP_ALIVE") or "1h"


def queue_limits() -> tuple[int, int, float]:
    """(waiting requests per model, waiting requests in all, seconds a request may wait)."""
    return (env_int("RBEE_QUEUE_PER_MODEL", 64), env_int("RBEE_QUEUE_MAX", 256),
            float(env_int("RBEE_QUEUE_TIMEOUT_S", 300)))


def max_replicas() -> int:
    """RBEE_MAX_REPLICAS: workers one model may get when all its slots are busy (default 1)."""
    return env_int("RBEE_MAX_REPLICAS", 1, maximum=64)


def worker_slots() -> int:
    return env_int("RBEE_WORKER_SLOTS", DEFAULT_SLOTS, maximum=512)


def api_pulls_from_hub() -> bool:
    """RBEE_API_PULLS=hub: a request through the OpenAI API for a model no hive of the fleet holds may download it
    from the hub. Default (`peers`): the API only copies models between your own hives, never downloads."""
    value = os.environ.get("RBEE_API_PULLS", "peers").strip().lower()
    if value not in ("peers", "hub"):
        raise SettingsError(f"RBEE_API_PULLS must be 'peers' or 'hub', not {value[:40]!r}")
    return value == "hub"


def affinity() -> bool:
    """RBEE_AFFINITY=0: requests go to the least-loaded worker, without prefix-cache affinity (default 1: on)."""
    value = os.environ.get("RBEE_AFFINITY", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise SettingsError(f"RBEE_AFFINITY must be 1 (on) or 0 (off), not {value[:40]!r}")
    return value in ("1", "true", "yes", "on")


def local_hive() -> bool:
    """RBEE_LOCAL_HIVE=0: the queen's own machine runs no workers (only remote hives serve)."""
    return os.environ.get("RBEE_LOCAL_HIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def heartbeat_s() -> float:
    """How often hives report to the queen (RBEE_HEARTBEAT_MS, default 2000)."""
    return env_int("RBEE_HEARTBEAT_MS", 2000, minimum=100) / 1000


def hive_register_timeout_s() -> float:
    """How long `rbee hive install` waits for the hive it started to register (RBEE_HIVE_REGISTER_TIMEOUT_S)."""
    return float(env_int("RBEE_HIVE_REGISTER_TIMEOUT_S", 60, minimum=1, maximum=3600))


def hive_timeout_s() -> float:
    """Silence after which the queen marks a hive unreachable (default: three missed heartbeats)."""
    return env_int("RBEE_HIVE_TIMEOUT_MS", int(heartbeat_s() * 3000), minimum=100) / 1000


def queen_network_host() -> str:
    """Where a queen with enrolled hives listens so that they reach it (RBEE_QUEEN_NETWORK_HOST)."""
    return os.environ.get("RBEE_QUEEN_NETWORK_HOST", "0.0.0.0")


def max_body_bytes() -> int:
    """The largest request body the queen reads (RBEE_MAX_BODY_MB, default 32)."""
    return env_int("RBEE_MAX_BODY_MB", 32, maximum=4096) * 2**20


def audio_max_bytes() -> int:
    """The largest audio file /v1/audio/* takes (RBEE_AUDIO_MAX_MB, default 25: OpenAI's own bound). The whole
    request is also bounded by RBEE_MAX_BODY_MB."""
    return env_int("RBEE_AUDIO_MAX_MB", 25, maximum=4096) * 2**20


def image_max_pixels() -> int:
    """The largest image (width x height) /v1/images/generations makes (RBEE_IMAGE_MAX_PIXELS, default 262144:
    512x512, SD1.x's own size); an image worker's memory estimate allows for one this large."""
    return env_int("RBEE_IMAGE_MAX_PIXELS", 512 * 512, minimum=64 * 64, maximum=4096 * 4096)


def audit_retention_s() -> float:
    """How long the audit log keeps an entry (RBEE_AUDIT_RETENTION_DAYS, default 365)."""
    return env_int("RBEE_AUDIT_RETENTION_DAYS", 365, maximum=100_000) * 86400.0


def usage_flush_s() -> float:
    """How often usage counters are written to the queen's database (RBEE_USAGE_FLUSH_MS, default 2000)."""
    return env_int("RBEE_USAGE_FLUSH_MS", 2000, minimum=50) / 1000


def log_max_bytes() -> int:
    """How large a daemon's log grows before it is rotated to LOG.1 (RBEE_LOG_MAX_MB, default 50)."""
    return env_int("RBEE_LOG_MAX_MB", 50, minimum=1, maximum=100_000) * 2**20


def spread_bounds() -> tuple[float, float]:
    """The worst link a spread across hives uses: (RBEE_SPREAD_MAX_RTT_MS, default 5: median round trip;
    RBEE_SPREAD_MIN_MBPS, default 100: megabytes per second). rbee/queen/spread_plan.py says why."""
    return (float(env_int("RBEE_SPREAD_MAX_RTT_MS", 5, minimum=1, maximum=10_000)),
            float(env_int("RBEE_SPREAD_MIN_MBPS", 100, minimum=1, maximum=1_000_000)))


def spread_allowed() -> bool:
    """RBEE_SPREAD=0: a model no one hive holds is refused (model_too_large) instead of spread across hives;
    a spread forced with `rbee worker start --device HIVE:DEV+HIVE:DEV` still runs."""
    return os.environ.get("RBEE_SPREAD", "1").strip().lower() not in ("0", "false", "no", "off")


def slot_cache_bytes() -> int:
    """RBEE_SLOT_CACHE_MIB: the disk a hive gives to saved KV caches of unloaded workers' slots (default 2048 MiB;
    the least recently used file goes first; 0: nothing is saved)."""
    return env_int("RBEE_SLOT_CACHE_MIB", 2048, minimum=0, maximum=2**24) * 2**20


def slot_save_timeout_s() -> float:
    """RBEE_SLOT_SAVE_TIMEOUT_MS: how long saving a worker's slots may delay its stop, all slots together (default
    2000); a save still running then is abandoned and its partial file deleted."""
    return env_int("RBEE_SLOT_SAVE_TIMEOUT_MS", 2000, minimum=1, maximum=600_000) / 1000
