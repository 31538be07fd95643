"""API keys, their usage, and the audit log: what `rbee key` and `rbee audit` exchange with the queen."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from rbee.contracts.base import Contract

KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
KEY_PREFIX = "rbee-"
"""Every API key starts with this, so a leaked one is easy to recognise (and to grep for)."""



class KeyCreate(Contract):
    name: str = Field(pattern=KEY_NAME.pattern, description="a unique name: who or what uses the key "
                      "(1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit)")
    expires_at: float | None = Field(default=None, allow_inf_nan=False,
                                     description="Unix time after which the key stops working")
    models: list[str] | None = Field(default=None, description="the only models this key may use (all if unset)")
    rpm: int | None = Field(default=None, ge=1, le=10**9, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, le=10**12, description="tokens (prompt + completion) per minute")

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not m.strip() for m in value)):
            raise ValueError("list at least one model name, or leave it out for all models")
        return value


class KeyInfo(Contract):
    name: str
    prefix: str = Field(description="the first characters of the secret, to tell keys apart")
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None


class KeyCreated(KeyInfo):
    secret: str = Field(description="the key itself; shown this once, stored only as a digest")


class KeyUsage(Contract):
    name: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    audio_seconds: float = 0.0  # speech transcribed or translated
    images: int = 0  # images generated


class AuditEntry(Contract):
    id: int
    at: float
    actor: str = Field(description="'admin' (the queen's admin token), 'local' (keyless loopback), 'key:NAME' or "
                                   "'hive:ALIAS' (what a hive's report caused)")
    source: str = Field(description="the caller's address")
    action: str = Field(description="e.g. key.create, key.revoke, hive.enrol, hive.remove, model.pull, model.remove")
    target: str
    detail: str = ""
