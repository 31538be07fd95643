"""The path every inference request takes through the queen, whatever its client's protocol:
admission (keys, limits, file paths, keep-alive bounds), a worker by `model` (queued, with a deadline
and a client that may leave), forwarding with one retry before the first byte, and metering.

Each protocol's routes (openai_routes, anthropic_routes, responses_routes) call `infer` with their
contract, the worker's path, and their error style; errors are raised as QueenErrors for the route to
render in its protocol's shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from rbee.common import settings
from rbee.contracts.openai import HIVE_HEADER, ModelRequest
from rbee.contracts.workers import (
    ENGINE_GONE,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    TIMEOUT_HEADER,
    WorkerMode,
    timeout_seconds,
)
from rbee.hive import model_refs
from rbee.hive.model_refs import looks_like_path
from rbee.queen import affinity, context_fit, keep_alive
from rbee.queen.auth import LOCAL, Forbidden, Principal
from rbee.queen.error_styles import OPENAI, ErrorStyle
from rbee.queen.errors import (
    InvalidRequest,
    ModelTooLargeError,
    PromptTooLong,
    QueenError,
    WorkerUnavailable,
)
from rbee.queen.errors import request_id as request_id_of
from rbee.queen.guard import as_owner, principal_of
from rbee.queen.leases import with_slot
from rbee.queen.policy import PolicyRequest
from rbee.queen.proxy import OnEnd, Outcome, Translation
from rbee.queen.remote_workers import RemoteWorker
from rbee.queen.requests import field_of, read_json
from rbee.queen.scheduler import AnyWorker, Lease
from rbee.queen.state import QueenState, queen_state
from rbee.queen.usage import counts_in

log = logging.getLogger(__name__)


Translator = Callable[[bytes, ModelRequest], tuple[str, bytes, Translation]]
"""(client's body, its parsed contract) -> (the worker's path, the body for it, the translation back)"""


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def deadline_of(request: Request) -> float | None:
    """Event-loop time by which the request must be done, from the client's X-Rbee-Timeout (seconds)."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    seconds = timeout_seconds(raw)
    if seconds is None:
        raise InvalidRequest(f"The {TIMEOUT_HEADER} header must be a number of seconds from {MIN_TIMEOUT_S} to "
                             f"{MAX_TIMEOUT_S:.0f}, not {raw!r}.", param=TIMEOUT_HEADER)
    return asyncio.get_running_loop().time() + seconds


async def _acquire(request: Request, parsed: ModelRequest, mode: WorkerMode, exclude: frozenset[str],
                   deadline: float | None, asked: PolicyRequest, context: int | None = None,
                   key: affinity.Key | None = None) -> Lease:
    """Wait for a worker; the queue (admission.py) stops the wait when the client goes away or its deadline
    passes."""
    gone = asyncio.ensure_future(client_gone(request))
    try:
        return await queen_state(request).scheduler.acquire(
            parsed.model, mode, request.headers.get(HIVE_HEADER), parsed.keep_alive, exclude, asked, context,
            deadline=deadline, gone=gone, key=key)
    finally:
        gone.cancel()


def _hand_set(model: str, remote: bool) -> str | None:
    """The setting that fixes a model's context per slot, if one does: the queen's models.toml (sent to every
    hive), or RBEE_WORKER_CONTEXT (the queen's own applies to its local hive)."""
    try:
        if model_refs.model_settings(model).context:
            return "`context` for this model in models.toml"
    except model_refs.BadModelRef:
        return None  # the scheduler has refused the request already
    return "RBEE_WORKER_CONTEXT" if settings.worker_context() and not remote else None


def _context_asked(parsed: ModelRequest) -> int | None:
    """Ollama's `options.num_ctx`: a worker with at least that context per slot, as Ollama reloads a model for
    it; a context set by hand is kept (the request is served by the worker there is)."""
    num_ctx: int | None = getattr(field_of(parsed, "options"), "num_ctx", None)
    return num_ctx if num_ctx is not None and _hand_set(parsed.model, remote=False) is None else None


async def _larger(request: Request, parsed: ModelRequest, mode: WorkerMode, deadline: float | None,
                  asked: PolicyRequest, worker: AnyWorker, refused: PromptTooLong) -> Lease:
    """A worker of the same model with a context the refused prompt fits, loaded if memory allows
    (context_fit.py); else the worker's error, with the numbers and the setting to change."""
    name = worker.spec.model.name
    choice = context_fit.larger(name, refused.tokens, refused.context, worker.spec.model.context_length,
                                settings.max_context(), _hand_set(name, isinstance(worker, RemoteWorker)))
    if choice.context is None:
        raise refused.explained(choice.why)
    log.info("a prompt of %d tokens is longer than %s's %d per slot: a worker with %d", refused.tokens, worker.id,
             refused.context, choice.context)
    try:
        return await _acquire(request, parsed, mode, frozenset(), deadline, asked, choice.context)
    except ModelTooLargeError as exc:
        raise refused.explained(exc.message) from exc


def _metering(state: QueenState, who: Principal, stream: bool, request_id: str, path: str,
              audio_s: float = 0.0, images: int = 0) -> OnEnd:
    """What to do when a forwarded request ends: count it, and its tokens (or seconds of audio, or images), for
    whoever sent it."""
    def ended(outcome: Outcome) -> None:
        prompt, completion, cached = counts_in(outcome.tail, stream, outcome.head)
        if stream and not completion:  # cut short, before the closing event that reports the counts
            completion = outcome.events
        state.metrics.served(outcome, prompt, completion, cached)
        status, heard = outcome.status, audio_s if outcome.status < 400 else 0.0
        drawn = images if status < 400 else 0
        state.usage.record(who.usage_name, outcome.model, prompt=prompt, completion=completion, error=status >= 400,
                           audio_s=heard, images=drawn)
        state.keyring.spent(who, prompt + completion, heard, drawn)
        log.debug("request %s %s model=%s hive=%s worker=%s status=%d ttft=%.3fs took=%.3fs tokens=%d+%d by %s",
                  request_id, path, outcome.model, outcome.hive, outcome.worker, status, outcome.ttft_s,
                  outcome.duration_s, prompt, completion, who.actor)
    return ended


def engine_gone(outcome: Outcome) -> bool:
    """Whether a worker's whole answer is a hive front's word that the worker's engine died before answering
    (a 502 with code ENGINE_GONE): the worker is gone, as when one on this machine drops the connection."""
    if outcome.status != 502 or len(outcome.tail) > 4096:
        return False
    try:
        return bool(json.loads(outcome.tail)["error"]["code"] == ENGINE_GONE)
    except (ValueError, KeyError, TypeError):
        return False


async def _forward_unless_gone(lease: Lease, ended: OnEnd,
                               forward: Callable[[OnEnd], Awaitable[Response]]) -> Response:
    """`forward(on_end)`, raising WorkerUnavailable (unmetered: the retry is metered) when the worker's front
    says its engine died before answering."""
    gone: list[Outcome] = []
    response = await forward(lambda outcome: gone.append(outcome) if engine_gone(outcome) else ended(outcome))
    if gone:
        raise WorkerUnavailable(f"The engine of worker {lease.worker.id} for '{lease.worker.spec.model.name}' on "
                                f"hive {lease.worker.hive} stopped before answering; retry the request.")
    return response


_COUNTING = ("/v1/messages/count_tokens", "/v1/responses/input_tokens")  # no slot runs these


def _key_of(request: Request, parsed: ModelRequest, mode: WorkerMode, path: str) -> affinity.Key | None:
    """The request's prefix chain for affinity (affinity.py): generating requests only, while it is on (None:
    its lease names no slot)."""
    if mode is not WorkerMode.GENERATE or path in _COUNTING or queen_state(request).scheduler.affinity is None:
        return None
    return affinity.key_of(parsed.model, parsed, affinity.session_of(request.headers))


async def _may_open_files(request: Request, who: Principal, model: str) -> Principal:
    """A model given as a file path is opened for the admin (token, or the queen's own Unix user) only:
    the queen could read files its caller cannot. Missing and existing files are refused alike."""
    if not looks_like_path(model.strip()) or who.is_admin:
        return who
    who = await as_owner(request.scope)
    if not who.is_admin:
        raise Forbidden("A model given as a file path is opened only for the queen's own Unix user or the admin "
                        "token; use a model by name (`GET /v1/models` lists them); a file the owner loads once "
                        "(`rbee infer -m PATH`) joins the catalog under its name.",
                        param="model", code="model_not_allowed")
    return who


async def _bounded_keep_alive(request: Request, who: Principal, asked: str | int | float | None,
                              ) -> tuple[Principal, str | int | float | None]:
    """`keep_alive`, at most RBEE_KEY_MAX_KEEP_ALIVE unless the caller is the admin: an API key (or another
    local user) must not pin a worker forever."""
    if asked is None or who.is_admin:
        return who, asked
    try:
        seconds, bound = keep_alive.parse(asked), keep_alive.parse(settings.key_max_keep_alive())
    except ValueError:
        return who, asked  # the scheduler names the bad value (a bad bound stops the queen's start)
    if seconds is None or bound is None or seconds <= bound:
        return who, asked
    if who is LOCAL:
        who = await as_owner(request.scope)
        if who.is_admin:
            return who, asked
    return who, bound


async def infer(request: Request, contract: type[ModelRequest], path: str, mode: WorkerMode,
                errors: ErrorStyle = OPENAI, translator: Translator | None = None) -> Response:
    """Serve one JSON request: `translator`, where the engine does not speak the client's protocol, gives the
    worker's path and body for it, and how its answer is turned back."""
    deadline = deadline_of(request)
    body, parsed = await read_json(request, contract)
    translation = None
    if translator is not None:
        path, body, translation = translator(body, parsed)
    return await serve(request, body, parsed, path, mode, deadline, errors=errors, translation=translation)


async def serve(request: Request, body: bytes, parsed: ModelRequest, path: str, mode: WorkerMode,
                deadline: float | None, *, errors: ErrorStyle = OPENAI, translation: Translation | None = None,
                content_type: str = "application/json", audio_s: float = 0.0, images: int = 0) -> Response:
    """Serve a request whose body was read and checked: `body` goes to the worker's `path` as it is (a
    `content_type` of its own: an upload's multipart form; `audio_s`: the seconds of audio it carries, `images`:
    the images it asks for, for usage)."""
    state = queen_state(request)
    who = principal_of(request.scope)
    stream = bool(field_of(parsed, "stream"))
    state.keyring.admit(who, parsed.model)
    who = await _may_open_files(request, who, parsed.model)
    who, bounded = await _bounded_keep_alive(request, who, parsed.keep_alive)
    if bounded != parsed.keep_alive:
        parsed = parsed.model_copy(update={"keep_alive": bounded})
    request_id = request_id_of(request)
    ended = _metering(state, who, stream, request_id, path, audio_s, images)
    pinned = request.headers.get(HIVE_HEADER)
    asked = PolicyRequest(parsed.model, str(mode), len(body) // 4, field_of(parsed, "max_tokens"), pinned)

    key = _key_of(request, parsed, mode, path)

    async def send(lease: Lease) -> Response:
        state.metrics.affinity(lease.worker.spec.model.name, lease.hit)
        await state.scheduler.resume(lease)  # a saved KV cache into its slot first, if it has one (kv_resume.py)
        return await _forward_unless_gone(lease, ended, lambda on_end: state.forwarder.forward(
            lease, path, with_slot(body, lease.slot), stream=stream, deadline=deadline, on_end=on_end,
            request_id=request_id, errors=errors, translation=translation, content_type=content_type))

    try:
        context = _context_asked(parsed)
        lease = state.scheduler.try_acquire(parsed.model, mode, pinned, parsed.keep_alive, asked, context, key)
        if lease is None:
            lease = await _acquire(request, parsed, mode, frozenset(), deadline, asked, context, key)
        try:
            return await send(lease)
        except WorkerUnavailable as exc:
            # The worker failed before sending a byte: one more try on another (or a fresh) worker.
            log.warning("worker %s failed before answering (%r); retrying once elsewhere", lease.worker.id,
                        exc.__cause__)
            return await send(await _acquire(request, parsed, mode, frozenset({lease.worker.id}), deadline, asked,
                                             context, key))
        except PromptTooLong as exc:  # before any byte too: once more on a worker with a larger context
            return await send(await _larger(request, parsed, mode, deadline, asked, lease.worker, exc))
    except QueenError as exc:
        # labels and usage rows are kept: a name no hive knows must not make a new one for every typo
        label = parsed.model if state.scheduler.is_known(parsed.model) else "(unknown)"
        state.usage.record(who.usage_name, label, error=True)
        state.metrics.refused(label, exc.status)
        exc.headers.setdefault("x-request-id", request_id)
        log.debug("request %s %s model=%s refused %d: %s", request_id, path, parsed.model, exc.status, exc.message)
        raise
