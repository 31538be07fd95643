"""The one wire shape of every error: OpenAI's envelope."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    """`{"error": {"message", "type", "param", "code"}}`, as OpenAI sends it."""

    error: ErrorBody
