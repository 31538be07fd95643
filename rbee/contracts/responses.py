"""OpenAI Responses request shapes, as the queen checks them before it routes (unknown fields are kept)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from rbee.contracts.openai import MAX_TOKENS, ModelRequest


class InputTokensRequest(ModelRequest):
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None


class ResponsesRequest(InputTokensRequest):
    input: str | list[dict[str, Any]]
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def max_tokens(self) -> int | None:
        """What the scheduler's policy reads as the answer's bound."""
        return self.max_output_tokens
