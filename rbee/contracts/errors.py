"""The one wire shape of every error: OpenAI's envelope."""

from __future__ import annotations

from rbee.contracts.base import Contract


class ErrorBody(Contract):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(Contract):
    """`{"error": {"message", "type", "param", "code"}}`, as OpenAI sends it."""

    error: ErrorBody
