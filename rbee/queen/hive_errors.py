"""What a hive's failure means, in one place: for the seam (rbee/queen/hive_seam.py), and for the queen's answers.

The seam's errors, which both kinds of hive raise (the embedded one directly, a remote one via `from_remote`):

    ModelUnavailable    the hive cannot serve that name: not in its catalog, its file gone, a bad name
    ModelInUse          the model is answering requests there, so it cannot be removed
    JobFailed           a step of a job failed (pull, copy, share, a device asked for), with the reason
    WorkerStartError    a worker did not start there (the cause from its log)
    SlotRefused         a saved-slot call asked for what cannot be: no such worker, slot or key (400/404/409)
    HiveCallFailed      a remote hive could not be asked (no answer, TLS), or failed in a way none of the above says

`from_remote` turns a remote hive's HTTP failure into the error the embedded hive raises for the same thing;
`to_queen` (and `queen_error`) turns the seam's errors into the queen's (rbee/queen/errors.py) for an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rbee.common.jobs import JobFailed
from rbee.hive.model_store import ModelInUse, ModelUnavailable
from rbee.hive.slot_cache import SlotRefused
from rbee.hive.worker import WorkerStartError
from rbee.queen.errors import Conflict, ModelNotFound, QueenError, UpstreamError, WorkerUnavailable
from rbee.queen.hive_client import HiveCallFailed

HiveError = ModelUnavailable | ModelInUse | JobFailed | WorkerStartError | HiveCallFailed | SlotRefused
HIVE_ERRORS = (ModelUnavailable, ModelInUse, JobFailed, WorkerStartError, HiveCallFailed, SlotRefused)

# The statuses rbee/hive/app.py answers with for the seam's errors (its own error_response mapping).
BY_STATUS: Mapping[int, Callable[[str], Exception]] = {404: ModelUnavailable, 409: ModelInUse}
SLOT_STATUS: Mapping[int, Callable[[str], Exception]] = {
    400: lambda m: SlotRefused(m, 400), 404: lambda m: SlotRefused(m, 404), 409: lambda m: SlotRefused(m, 409)}


def upgrade_hint(alias: str, version: str) -> str:
    return (f"hive '{alias}' runs rbee {version}, which cannot do this for its queen; "
            f"`rbee hive upgrade {alias}` brings it up to date")


@contextmanager
def from_remote(alias: str, version: str, failing: Callable[[str], Exception], what: str = "",
                by_status: Mapping[int, Callable[[str], Exception]] | None = None) -> Iterator[None]:
    """A call to a remote hive, its `HiveCallFailed` raised as the seam's error: a route the hive lacks (an older
    rbee) as `failing` saying how to upgrade it; a status of `by_status` as that error; anything else as `failing`
    (its message after `what`, when given)."""
    try:
        yield
    except HiveCallFailed as exc:
        if exc.no_route:
            raise failing(upgrade_hint(alias, version)) from exc
        known = (by_status or {}).get(exc.status or 0)
        if known is not None:
            raise known(str(exc)) from exc
        raise failing(f"{what}: {exc}" if what else str(exc)) from exc


def queen_error(exc: HiveError, what: str = "") -> QueenError:
    """The queen's error for a hive's: `what` (the operation, for the message) before the hive's reason."""
    message = f"{what}: {exc}" if what else str(exc)
    if isinstance(exc, ModelUnavailable):
        return ModelNotFound(message, param="model")
    if isinstance(exc, ModelInUse | SlotRefused):
        return Conflict(message)
    if isinstance(exc, HiveCallFailed):
        return UpstreamError(message)
    return WorkerUnavailable(message)  # JobFailed, WorkerStartError: the world failed


@contextmanager
def to_queen(what: str = "") -> Iterator[None]:
    """Raise the seam's errors inside as the queen's (`queen_error`)."""
    try:
        yield
    except HIVE_ERRORS as exc:
        raise queen_error(exc, what) from exc
