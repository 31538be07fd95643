"""Settings read from the environment, with the defaults a user expects."""

from __future__ import annotations

import os
from pathlib import Path

from rbee.common import paths

DEFAULT_QUEEN_HOST = "127.0.0.1"
DEFAULT_QUEEN_PORT = 7833
DEFAULT_HIVE_PORT = 7835
DEFAULT_CONTEXT = 4096
DEFAULT_SLOTS = 4


def queen_port() -> int:
    return int(os.environ.get("RBEE_QUEEN_PORT", DEFAULT_QUEEN_PORT))


def queen_host() -> str:
    return os.environ.get("RBEE_QUEEN_HOST", DEFAULT_QUEEN_HOST)


def queen_url() -> str:
    return os.environ.get("RBEE_QUEEN_URL") or f"http://{queen_host()}:{queen_port()}"


def worker_threads() -> int | None:
    """Threads per worker (`-t`); None lets llama-server decide."""
    value = os.environ.get("RBEE_WORKER_THREADS")
    return int(value) if value else None


def worker_context() -> int:
    """Context tokens per slot."""
    return int(os.environ.get("RBEE_WORKER_CONTEXT", DEFAULT_CONTEXT))


def models_dir() -> Path:
    """Where pulled models are kept."""
    override = os.environ.get("RBEE_MODELS_DIR")
    return Path(override).expanduser() if override else paths.data_dir() / "models"


def worker_slots() -> int:
    return int(os.environ.get("RBEE_WORKER_SLOTS", DEFAULT_SLOTS))
