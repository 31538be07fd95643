"""A hive's side of a copy from another hive: fetch one catalog entry's files from a peer's share.

    check     every file name stays inside the models folder (a peer naming `../x` or `/etc/x` is refused);
              the source URL is an address literal, HTTPS when this hive has TLS (the peer's certificate
              is checked against the cluster CA)
    room      refuse before starting when the disk cannot hold what is still missing, with this hive's numbers
    fetch     each file into `.partial/peer-SHARE/`; a cut connection resumes with Range where it stopped
              (while bytes keep coming), a peer that stays away fails the copy; progress like a hub pull
    verify    size and sha256 (hashed as the bytes are written) against the source's catalog; a mismatch
              deletes the file
    keep      move into the models folder, then register in the catalog (under the source's name)

A failure or cancel deletes the staging folder: nothing is left behind, and the queen tries the next source.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import shutil
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rbee.common import settings
from rbee.common.hop import HOP
from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.copies import HiveFetch, ShareFile
from rbee.contracts.models import ModelEntry
from rbee.hive import downloads
from rbee.hive.catalog import Catalog, describe_file
from rbee.hive.gguf_info import NotAGGUFError

if TYPE_CHECKING:  # imported when a copy starts: the queen's embedded hive does without it when idle
    import httpx

CHUNK = 1 << 20
RESUMES = 3  # a cut connection is resumed with Range this many times, as long as bytes keep coming


def check_names(files: list[ShareFile]) -> None:
    """Refuse names that leave the models folder, or reach into rbee's own (`.partial`) or hidden folders."""
    for f in files:
        if not downloads.stays_inside(f.name) or f.name.startswith("."):
            raise JobFailed(f"the peer lists a file named {f.name!r}, which would land outside the models folder; "
                            "refused")
    if len({f.name for f in files}) < len(files):
        raise JobFailed("the peer lists one file name twice; refused")


def _client(asked: HiveFetch, context: ssl.SSLContext | None) -> httpx.AsyncClient:
    import httpx

    if asked.source_url.startswith("http://") and context is not None:
        raise JobFailed(f"hive '{asked.source}' was named with a plain http:// URL while this hive uses TLS; "
                        "refused (the model would travel in clear)")
    plain = asked.source_url.startswith("http://")  # nothing to verify (and no CA bundle to load for it)
    hop = {} if asked.from_queen else HOP  # a queen refuses X-Rbee-Hop; a peer hive's URL must not lead to one
    return httpx.AsyncClient(verify=False if plain else context or True, headers={"Authorization": f"Bearer "
                             f"{asked.token.get_secret_value()}", **hop},
                             timeout=httpx.Timeout(30.0, connect=5.0))


class _Part:
    """A file being received: appended to, and hashed as it is written (its verification reads nothing again).
    Every method blocks: call it in a thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.digest = hashlib.sha256()
        self.fh: BinaryIO = path.open("a+b")
        self.fh.seek(0)
        while chunk := self.fh.read(CHUNK):  # a partial file from before: its bytes count
            self.digest.update(chunk)
        self.size = self.fh.tell()

    def write(self, data: bytes | bytearray) -> None:
        self.fh.write(data)
        self.digest.update(data)
        self.size += len(data)

    def restart(self) -> None:
        self.fh.truncate(0)
        self.digest, self.size = hashlib.sha256(), 0


async def _one(client: httpx.AsyncClient, url: str, path: Path, f: ShareFile, progress: _Progress) -> _Part:
    """Fetch one file into `path`; a connection cut after some bytes is resumed there with Range (a few times)."""
    import httpx  # loaded already: `client` is one (_client)

    part = await asyncio.to_thread(_Part, path)
    progress.add(part.size)
    try:
        for attempt in range(RESUMES + 1):
            have = part.size
            try:
                await _stream(client, url, part, f, progress)
                return part
            except httpx.TransportError:
                if attempt == RESUMES or part.size == have:  # no progress since the last try: the peer is gone
                    raise
        return part
    finally:
        await asyncio.to_thread(part.fh.close)


async def _stream(client: httpx.AsyncClient, url: str, part: _Part, f: ShareFile, progress: _Progress) -> None:
    have = part.size
    if have >= f.size:
        return
    async with client.stream("GET", url, headers={"Range": f"bytes={have}-"} if have else None) as resp:
        if resp.status_code == 200 and have:
            await asyncio.to_thread(part.restart)  # the peer ignored the Range: start over
            progress.add(-have)
        elif resp.status_code not in (200, 206):
            await resp.aread()
            raise JobFailed(f"the peer refused {f.name} (HTTP {resp.status_code})")
        pending = bytearray()  # written in CHUNK-sized pieces, in a thread; what arrived before a cut is kept
        try:
            async for data in resp.aiter_raw():
                pending += data
                if len(pending) >= CHUNK:
                    full, pending = pending, bytearray()
                    await asyncio.to_thread(part.write, full)
                    progress.add(len(full))
        finally:
            if pending:
                await asyncio.to_thread(part.write, pending)
                progress.add(len(pending))


class _Progress:
    def __init__(self, emit: Emit, total: int) -> None:
        self.emit, self.total, self.done = emit, total, 0
        self.started, self.last, self.name = time.monotonic(), 0.0, ""

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not force and now - self.last < downloads.PROGRESS_INTERVAL_S:
            return
        self.last = now
        speed = self.done / max(now - self.started, 1e-6)
        eta = (self.total - self.done) / speed if speed > 0 else None
        self.emit(message=self.name, current=self.done, total=self.total, unit="bytes",
                  data={"speed": round(speed), "eta": round(eta, 1) if eta is not None else None})


async def _verify(path: Path, part: _Part, f: ShareFile, source: str) -> None:
    actual = part.digest.hexdigest() if part.size == f.size else None
    if actual != f.sha256:
        await asyncio.to_thread(path.unlink, True)
        what = f"got {part.size} bytes, the catalog says {f.size}" if actual is None else \
            f"sha256 {actual} does not match {source}'s catalog ({f.sha256})"
        raise JobFailed(f"{f.name} from hive '{source}': {what}; the file was deleted")


def _failure(exc: Exception, asked: HiveFetch, models: Path) -> JobFailed | None:
    """What to tell the user about `exc`; None for a failure that is no fault of the copy (a bug: raised)."""
    if isinstance(exc, JobFailed):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return JobFailed(f"the disk under {models} filled up while copying {asked.entry.name} from hive "
                         f"'{asked.source}'; the partial copy was deleted and nothing else changed")
    import httpx

    if isinstance(exc, httpx.HTTPError):
        return JobFailed(f"lost hive '{asked.source}' while copying {asked.entry.name} ({type(exc).__name__})")
    return None


async def fetch(alias: str, catalog: Catalog, asked: HiveFetch, emit: Emit,
                context: ssl.SSLContext | None) -> ModelEntry:
    """Copy `asked.entry` from the peer into this hive's models folder and catalog (a job body)."""
    check_names(asked.files)
    models = settings.models_dir()
    staging = models / ".partial" / f"peer-{asked.share_id}"
    total = sum(f.size for f in asked.files)
    try:
        await asyncio.to_thread(downloads.check_room, models, total)
    except JobFailed as exc:
        raise JobFailed(f"hive '{alias}': {exc}") from None
    emit(message=f"copying {asked.entry.name} from hive '{asked.source}' over the LAN: {len(asked.files)} "
                 f"file(s), {total / 1e9:.2f} GB")
    progress = _Progress(emit, total)
    try:
        async with _client(asked, context) as client:
            for index, f in enumerate(asked.files):
                progress.name = f.name
                part = staging / f.name
                url = f"{asked.source_url}/v1/hive/shares/{asked.share_id}/files/{index}"
                received = await _one(client, url, part, f, progress)
                progress.add(0, force=True)
                await _verify(part, received, f, asked.source)
        targets = [models / f.name for f in asked.files]
        await asyncio.to_thread(_move, [staging / f.name for f in asked.files], targets)
        return await _register(asked, targets, catalog, emit)
    except Exception as exc:
        failure = _failure(exc, asked, models)
        if failure is None:
            raise
        raise failure from exc
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


def _move(sources: list[Path], targets: list[Path]) -> None:
    """Move the verified files into place; a file already there (another model's, say) is never replaced."""
    taken = [str(t) for t in targets if t.exists()]
    if taken:
        raise JobFailed(f"{', '.join(taken)} already exists on this hive and is not replaced; the copy was deleted")
    for source, target in zip(sources, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        source.replace(target)


async def _register(asked: HiveFetch, targets: list[Path], catalog: Catalog, emit: Emit) -> ModelEntry:
    source = asked.entry
    try:
        entry = await asyncio.to_thread(
            describe_file, targets[0], source.name, "hf" if source.source == "hf" else "copy", repo=source.repo,
            revision=source.revision, sha256={f.name: f.sha256 for f in asked.files},
        )
    except NotAGGUFError as exc:
        for target in targets:
            await asyncio.to_thread(target.unlink, True)
        raise JobFailed(f"{exc}; the copied file was deleted") from exc
    await catalog.add(entry)
    emit(message=f"copied {entry.name} ({entry.size_bytes / 1e9:.2f} GB) from hive '{asked.source}' over the LAN")
    return entry
