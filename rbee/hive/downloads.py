"""Pulling GGUF models from the Hugging Face Hub (or a mirror: `HF_ENDPOINT`; gated repos: `HF_TOKEN`).

    plan      which files a name means (repo + quant, or one file; every part of a split model),
              with their sizes and sha256 from the hub's metadata
    room      refuse before starting when the disk cannot hold it, saying how much and where
    fetch     `huggingface_hub.hf_hub_download`, file by file, in a thread: it resumes from a
              `.incomplete` file with a Range request when the connection is cut; progress
              and cancellation go through its `tqdm_class` hook
    verify    size and sha256 of every file; a mismatch deletes it
    keep      move into the models folder, then (and only then) register in the catalog

Where from: `Hub` (one pull's endpoint and token). A local pull uses this process's own `HF_ENDPOINT`
and `HF_TOKEN`; a pull the queen sends to a remote hive brings the queen's, and the hive's own
`HF_ENDPOINT`, where it sets one, wins. A token is only ever passed to `huggingface_hub` as an argument.

A cancelled pull leaves nothing behind; a failed one keeps its partial files so the next pull
of the same revision resumes.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbee.common import settings
from rbee.common.jobs import Emit, JobFailed
from rbee.hive.gguf_info import SPLIT_RE
from rbee.hive.model_refs import DEFAULT_QUANT, BadModelRef, ModelRef, parse, quant_of

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
# huggingface_hub writes (and reports progress) in chunks of this size; its default, 10 MiB,
# makes a coarse progress bar and loses up to 10 MiB when a cut connection is resumed.
CHUNK_BYTES = int(os.environ.get("RBEE_DOWNLOAD_CHUNK_BYTES", 1024 * 1024))


@dataclass(frozen=True)
class Hub:
    """The hub one pull talks to; None means huggingface_hub's own (this process's HF_ENDPOINT, HF_TOKEN)."""

    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def for_job(cls, endpoint: str | None, token: str | None) -> Hub:
        """The hub for a pull the queen sent: its endpoint unless this machine sets HF_ENDPOINT; its token."""
        return cls(endpoint=None if os.environ.get("HF_ENDPOINT") else endpoint or None, token=token or None)

    @property
    def url(self) -> str:
        from huggingface_hub import constants

        return (self.endpoint or constants.ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class PullPlan:
    repo: str
    commit: str
    files: list[RemoteFile]
    quant: str | None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def catalog_name(self, ref: ModelRef) -> str:
        return catalog_name(ref, self.quant)


def catalog_name(ref: ModelRef, quant: str | None) -> str:
    """The name a pulled model gets: the alias when one was used, else `org/repo:QUANT` (or
    `org/repo/file.gguf`)."""
    if ref.filename:
        return f"{ref.repo}/{ref.filename}"
    if ref.text.count("/") == 1:
        return f"{ref.repo}:{(quant or DEFAULT_QUANT).upper()}"
    return ref.text


def catalog_name_guess(ref: ModelRef) -> str:
    """The name a pulled `ref` would have, without asking the hub."""
    return catalog_name(ref, ref.quant)


def catalog_names(model: str) -> set[str]:
    """The catalog names `model` may have on a hive: itself, and the name a hub pull of it gets."""
    try:
        ref = parse(model)
    except BadModelRef:
        return {model}
    return {model, catalog_name_guess(ref)} if ref.is_hub else {model}


def _gguf_groups(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """GGUF files grouped into models: a single file, or all parts of a split one (keyed by first part)."""
    groups: dict[str, list[RemoteFile]] = {}
    for f in sorted(files, key=lambda f: f.path):
        if not f.path.endswith(".gguf") or "mmproj" in f.path.lower():
            continue
        match = SPLIT_RE.search(f.path)
        key = f.path[: match.start()] + f"-00001-of-{match.group(2)}.gguf" if match else f.path
        groups.setdefault(key, []).append(f)
    return groups


def choose_files(ref: ModelRef, files: list[RemoteFile]) -> tuple[list[RemoteFile], str | None]:
    """The files a reference means, and their quantization; `JobFailed` says what to choose instead."""
    if ref.filename and ref.filename.endswith(".bin"):  # a whisper.cpp ggml model: one file, read when it lands
        chosen = [f for f in files if f.path == ref.filename]
        if not chosen:
            raise JobFailed(f"{ref.repo} has no file {ref.filename}; its model files: "
                            f"{', '.join(f.path for f in files if f.path.endswith(('.bin', '.gguf'))) or 'none'}")
        return chosen, None
    groups = _gguf_groups(files)
    if not groups:
        raise JobFailed(f"{ref.repo} has no .gguf files; rbee serves GGUF models only")
    if ref.filename:
        key = ref.filename
        match = SPLIT_RE.search(key)
        if match:
            key = key[: match.start()] + f"-00001-of-{match.group(2)}.gguf"
        if key not in groups:
            raise JobFailed(f"{ref.repo} has no file {ref.filename}; its GGUF files: {', '.join(groups)}")
        chosen = groups[key]
        return chosen, quant_of(chosen[0].path)
    by_quant: dict[str, list[RemoteFile]] = {}
    for key, group in groups.items():
        q = quant_of(key)
        if q:
            by_quant.setdefault(q, group)
    wanted = (ref.quant or DEFAULT_QUANT).upper()
    if wanted not in by_quant:
        available = ", ".join(sorted(by_quant)) or "none recognised"
        hint = f"name one: {ref.repo}:QUANT" if ref.quant is None else "choose another"
        raise JobFailed(f"{ref.repo} has no {wanted} GGUF; available quantizations: {available} ({hint})")
    group = by_quant[wanted]
    match = SPLIT_RE.search(group[0].path)
    if match and len(group) != int(match.group(2)):
        raise JobFailed(f"{ref.repo}: the split model {group[0].path} is incomplete on the hub "
                        f"({len(group)} of {int(match.group(2))} parts)")
    return group, wanted


def _hub_error(exc: Exception, ref: ModelRef, hub: Hub) -> JobFailed:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return JobFailed(f"{ref.repo} is gated: accept its terms on the hub, then set HF_TOKEN to a token "
                         "that has access")
    if isinstance(exc, RepositoryNotFoundError):
        return JobFailed(f"there is no model repo {ref.repo} on {hub.url} (if it is private, "
                         "set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return JobFailed(f"{ref.repo} has no revision {ref.revision!r}")
    if isinstance(exc, EntryNotFoundError):
        return JobFailed(f"{ref.repo} has no file {ref.filename or ''}")
    if isinstance(exc, HfHubHTTPError):
        return JobFailed(f"the hub answered an error for {ref.repo}: {exc}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return JobFailed(f"the disk under {settings.models_dir()} filled up while downloading {ref.repo}; the "
                         "partial download was deleted and nothing else changed. Free some space and pull again.")
    if _is_network(exc):
        return JobFailed(f"cannot reach {hub.url} ({type(exc).__name__}: {exc}); check the network, "
                         "or HF_ENDPOINT for a mirror")
    log.error("pulling %s failed unexpectedly", ref.repo, exc_info=exc)  # an rbee bug, most likely
    return JobFailed(f"pulling {ref.repo} failed with an unexpected error ({type(exc).__name__}); the hive's log "
                     "has the details. Nothing was added to the catalog.")


def _is_network(exc: BaseException) -> bool:
    """Whether `exc` says the hub could not be reached (a socket, TLS, a timeout, an HTTP client's error)."""
    kind = type(exc)
    return isinstance(exc, OSError | TimeoutError) or kind.__module__.split(".")[0] in ("httpx", "httpcore",
                                                                                       "requests", "urllib3")


def plan(ref: ModelRef, hub: Hub | None = None) -> PullPlan:
    """Ask the hub what `ref` means (blocking)."""
    from huggingface_hub import HfApi

    assert ref.repo is not None
    hub = hub or Hub()
    try:
        info = HfApi(endpoint=hub.endpoint, token=hub.token).model_info(ref.repo, revision=ref.revision,
                                                                         files_metadata=True)
    except Exception as exc:
        raise _hub_error(exc, ref, hub) from exc
    files = [
        RemoteFile(s.rfilename, int(s.lfs.size if s.lfs else s.size or 0), s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
    ]
    chosen, quant = choose_files(ref, files)
    for remote in chosen:
        if not stays_inside(remote.path):  # a hostile hub or mirror must not write outside the models folder
            raise JobFailed(f"{ref.repo} lists a file named {remote.path!r}, which would land outside the models "
                            "folder; refused")
    return PullPlan(repo=ref.repo, commit=str(info.sha), files=chosen, quant=quant)


def stays_inside(relative: str) -> bool:
    """Whether a path from the hub stays inside the folder it is joined to (no '..', not absolute)."""
    parts = relative.replace("\\", "/").split("/")
    return bool(relative) and not relative.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or would: its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def check_room(folder: Path, needed: int) -> None:
    """Refuse a download the disk under `folder` cannot hold."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise JobFailed(f"not enough disk space: the download needs {needed / 1e9:.2f} GB in {folder}, "
                        f"only {free / 1e9:.2f} GB is free. Free some space or set RBEE_MODELS_DIR elsewhere.")


class PullCancelled(Exception):
    """Raised inside the download thread when the job was cancelled."""


def _progress_class(on_bytes: Callable[[int], None], cancelled: threading.Event) -> type[Any]:
    """A tqdm stand-in for `hf_hub_download` that reports bytes and aborts when cancelled."""
    from tqdm.auto import tqdm

    class Progress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            if self._done:
                on_bytes(self._done)

        def update(self, n: float | None = 1) -> bool | None:
            if cancelled.is_set():
                raise PullCancelled
            self._done += int(n or 0)
            on_bytes(int(n or 0))
            return None

    return Progress


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def fetch(pull: PullPlan, staging: Path, emit: Emit, hub: Hub | None = None) -> list[Path]:
    """Download every file of `pull` into `staging`, verified; cancellable."""
    from huggingface_hub import constants, hf_hub_download

    constants.DOWNLOAD_CHUNK_SIZE = CHUNK_BYTES
    hub = hub or Hub()
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()
    total = pull.total_bytes
    state = {"done": 0, "last": 0.0, "started": time.monotonic()}

    def report(message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - state["last"] < PROGRESS_INTERVAL_S:
            return
        state["last"] = now
        elapsed = max(now - state["started"], 1e-6)
        speed = state["done"] / elapsed
        eta = (total - state["done"]) / speed if speed > 0 else None
        emit(message=message, current=state["done"], total=total, unit="bytes",
             data={"speed": round(speed), "eta": round(eta, 1) if eta is not None else None})

    paths: list[Path] = []
    for remote in pull.files:
        def on_bytes(n: int, name: str = remote.path) -> None:
            def apply() -> None:
                state["done"] += n
                report(name)
            loop.call_soon_threadsafe(apply)

        progress = _progress_class(on_bytes, cancelled)
        ref_for_errors = ModelRef(text=pull.repo, repo=pull.repo, filename=remote.path)
        task = asyncio.ensure_future(asyncio.to_thread(
            hf_hub_download, pull.repo, remote.path, revision=pull.commit, local_dir=staging, tqdm_class=progress,
            endpoint=hub.endpoint, token=hub.token,
        ))
        try:
            path = Path(await asyncio.shield(task))
        except asyncio.CancelledError:
            cancelled.set()
            await asyncio.gather(task, return_exceptions=True)  # the thread stops at its next chunk
            raise
        except PullCancelled:
            raise asyncio.CancelledError from None
        except JobFailed:
            raise
        except Exception as exc:
            raise _hub_error(exc, ref_for_errors, hub) from exc
        report(remote.path, force=True)
        emit(message=f"verifying {remote.path}")
        await _verify(path, remote)
        paths.append(path)
    return paths


async def _verify(path: Path, remote: RemoteFile) -> None:
    size = (await asyncio.to_thread(path.stat)).st_size
    if size != remote.size:
        await asyncio.to_thread(path.unlink, True)
        raise JobFailed(f"{remote.path}: got {size} bytes, the hub says {remote.size}; the file was deleted")
    if remote.sha256:
        actual = await asyncio.to_thread(sha256_of, path)
        if actual != remote.sha256:
            await asyncio.to_thread(path.unlink, True)
            raise JobFailed(f"{remote.path}: sha256 {actual} does not match the hub's {remote.sha256}; "
                            "the file was deleted")
