"""Speech to text: `POST /v1/audio/transcriptions` and `/v1/audio/translations` (OpenAI's multipart uploads),
routed by `model` to a whisper-server worker and forwarded to its `/inference` as the client's own bytes.

The queen reads the form only to check it: the file is there, not empty, not over RBEE_AUDIO_MAX_MB, and audio
whisper-server decodes (WAV, MP3, FLAC); `response_format` is one OpenAI names; the model is a speech model (the
scheduler says so, naming its kind). A translation is the same upload with whisper-server's `translate` field
added as one more part before the form's closing boundary; nothing else of the body is rewritten.
"""

from __future__ import annotations

import asyncio

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.common import settings
from rbee.contracts.openai import TranscriptionRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen.audio import FORMATS, audio_kind, audio_seconds
from rbee.queen.errors import InvalidRequest
from rbee.queen.guard import RequestTooLarge
from rbee.queen.inference import deadline_of, serve
from rbee.queen.requests import validate

INFERENCE_PATH = "/inference"  # whisper-server's route


class _PlainText:
    """`response_format=text`: whisper-server labels it text/html; the client gets it as text/plain."""

    media_type = "text/plain; charset=utf-8"

    def whole(self, content: bytes) -> bytes:
        return content

    def chunk(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("An audio request is a multipart/form-data upload with the recording in its `file` "
                             "field and the `model` to use (as OpenAI's SDK sends it).", code="invalid_content_type")
    return boundary


async def _read(request: Request, limit: int) -> tuple[bytes, dict[str, object], bytes]:
    """The raw body, the form's text fields, and the uploaded file's bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + 64 * 1024:  # the file's bound, and room for the other fields
        raise RequestTooLarge(f"The upload ({length} bytes) is larger than {limit} bytes (RBEE_AUDIO_MAX_MB).",
                              param="file")
    body = await request.body()
    try:
        form = await request.form(max_files=1, max_fields=32)
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise InvalidRequest(f"The multipart form cannot be read: {detail}.", code="invalid_form") from exc
    upload = form.get("file")
    fields: dict[str, object] = {k: v for k, v in form.items() if isinstance(v, str)}
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("The form has no `file` field with the recording to transcribe.", param="file",
                             code="missing_field")
    data = await upload.read()
    await form.close()
    if len(data) > limit:
        raise RequestTooLarge(f"The audio file ({len(data)} bytes) is larger than {limit} bytes (RBEE_AUDIO_MAX_MB).",
                              param="file")
    if not data:
        raise InvalidRequest("The uploaded file is empty.", param="file", code="empty_file")
    if audio_kind(data) is None:
        raise InvalidRequest(f"The uploaded file is not audio rbee can transcribe ({FORMATS}; convert others "
                             "first, e.g. `ffmpeg -i IN -ar 16000 OUT.wav`).", param="file", code="invalid_audio")
    return body, fields, data


def _with_translate(body: bytes, boundary: bytes) -> bytes:
    """The form with whisper-server's `translate=true` as one more part, before its closing boundary."""
    end = body.rfind(b"--" + boundary + b"--")
    if end < 0:
        raise InvalidRequest("The multipart form does not end with its closing boundary.", code="invalid_form")
    extra = b'--%s\r\nContent-Disposition: form-data; name="translate"\r\n\r\ntrue\r\n' % boundary
    return body[:end] + extra + body[end:]


async def _audio(request: Request, translate: bool) -> Response:
    deadline = deadline_of(request)
    content_type = request.headers.get("content-type", "")
    boundary = _boundary(content_type)
    body, fields, data = await _read(request, settings.audio_max_bytes())
    parsed = validate(fields, TranscriptionRequest)
    if translate:
        body = _with_translate(body, boundary)
    translation = _PlainText() if parsed.response_format == "text" else None
    seconds = await asyncio.to_thread(audio_seconds, data)  # an MP3's frames summed: up to ~0.2 s for 25 MB
    return await serve(request, body, parsed, INFERENCE_PATH, WorkerMode.TRANSCRIBE, deadline,
                       translation=translation, content_type=content_type, audio_s=seconds)


async def transcriptions(request: Request) -> Response:
    return await _audio(request, translate=False)


async def translations(request: Request) -> Response:
    return await _audio(request, translate=True)


routes = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
]
