"""The fleet's catalog, between queen and hive: pulls the queen sends to a hive, and each hive's disk.

    queen -> hive   POST /v1/hive/pulls  HivePull -> JobCreated  (Bearer: the join token)
    keeper -> queen GET  /v1/storage              -> [HiveDisk]
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_serializer

from rbee.contracts.base import Contract


class HivePull(Contract):
    """queen -> hive `POST /v1/hive/pulls`: download a model there, as a job of the hive's own.

    The hub settings travel with the job: `hf_endpoint` is the queen's `HF_ENDPOINT` (a hive whose own
    environment sets one keeps its own); `hf_token` is the queen's `HF_TOKEN`, used for this job only and
    never stored, logged or put in an event. It is masked in `repr`/`str`; only JSON carries it.
    """

    model: str = Field(min_length=1, max_length=1024)
    hf_endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    hf_token: SecretStr | None = Field(default=None, max_length=4096)

    @field_serializer("hf_token", when_used="json")
    def _reveal(self, token: SecretStr | None) -> str | None:
        return token.get_secret_value() if token is not None else None


class HiveDisk(Contract):
    """`GET /v1/storage`: what a hive's models take on its disk, and what is free under its models folder."""

    hive: str
    models: int = 0
    models_bytes: int = 0
    free_bytes: int | None = None  # None: the hive did not say (an older hive)
