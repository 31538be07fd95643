"""Settings read from the environment, with the defaults a user expects."""

from __future__ import annotations

import os
from pathlib import Path

from rbee.common import paths

DEFAULT_QUEEN_HOST = "127.0.0.1"
DEFAULT_QUEEN_PORT = 7833
DEFAULT_CONTEXT = 4096
DEFAULT_SLOTS = 4


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


def queen_host() -> str:
    return os.environ.get("RBEE_QUEEN_HOST", DEFAULT_QUEEN_HOST)


def queen_url() -> str:
    return os.environ.get("RBEE_QUEEN_URL") or f"http://{queen_host()}:{queen_port()}"


def worker_threads() -> int | None:
    """Threads per worker (`-t`); None lets llama-server decide."""
    value = env_int("RBEE_WORKER_THREADS", 0, minimum=0)
    return value or None


def worker_context() -> int:
    """Context tokens per slot."""
    return env_int("RBEE_WORKER_CONTEXT", DEFAULT_CONTEXT, minimum=16)


def models_dir() -> Path:
    """Where pulled models are kept."""
    override = os.environ.get("RBEE_MODELS_DIR")
    return Path(override).expanduser() if override else paths.data_dir() / "models"


def worker_slots() -> int:
    return env_int("RBEE_WORKER_SLOTS", DEFAULT_SLOTS, maximum=512)
