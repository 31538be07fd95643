"""Hive-to-hive model copies: the shapes between the queen, the source hive A and the target hive B.

    queen -> A  POST /v1/hive/shares  ShareOpen -> ShareOpened     (Bearer: A's join token)
    queen -> B  POST /v1/hive/fetches HiveFetch -> JobCreated      (Bearer: B's join token)
    B -> A      GET  /v1/hive/shares/{share_id}/files/{index}      (Bearer: the share's token, from B's address
                                                                   only; Range for resume)

When A is the queen's embedded hive, the queen serves that same file route on its own port, and the fetch
says `from_queen`: B reads it at its own `queen_url` (the queen's address as B knows it, its certificate
checked against the cluster CA as for heartbeats), not at `source_url`.

A share is short-lived, names one catalog entry and one peer address, and its token reads only its files.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_serializer

from rbee.contracts.base import Contract
from rbee.contracts.bounds import Bytes, FilePath, HostAddress, Name
from rbee.contracts.models import ModelEntry

SHARE_ID_PATTERN = r"^share-[0-9a-f]{16}$"
MAX_SHARE_S = 3600.0


class ShareFile(Contract):
    """One file of a share: where it lands under the target's models folder, its size and sha256."""

    name: FilePath = Field(min_length=1)
    size: Bytes
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ShareOpen(Contract):
    """queen -> A: serve `model`'s files to the hive at `peer_address` for `expires_s` seconds."""

    model: Name = Field(min_length=1)
    peer_address: HostAddress
    expires_s: float = Field(default=600.0, gt=0, le=MAX_SHARE_S)


def _reveal(token: SecretStr) -> str:
    return token.get_secret_value()


class ShareOpened(Contract):
    """A -> queen: the share, its token (masked in repr; JSON carries it), A's entry and its files."""

    share_id: str = Field(pattern=SHARE_ID_PATTERN)
    token: SecretStr = Field(min_length=16, max_length=256)
    entry: ModelEntry
    files: list[ShareFile] = Field(min_length=1, max_length=1024)

    @field_serializer("token", when_used="json")
    def _token(self, token: SecretStr) -> str:
        return _reveal(token)


class HiveFetch(Contract):
    """queen -> B: fetch `entry` from the hive at `source_url`, with the share's token, checking every file."""

    source: Name = Field(min_length=1)  # A's alias, for messages
    source_url: str = Field(max_length=256, pattern=r"^https?://[0-9A-Fa-f.:\[\]]+:[0-9]{1,5}$")
    share_id: str = Field(pattern=SHARE_ID_PATTERN)
    token: SecretStr = Field(min_length=16, max_length=256)
    entry: ModelEntry
    files: list[ShareFile] = Field(min_length=1, max_length=1024)
    from_queen: bool = False  # A is the queen's own hive: B reads the share at its queen_url instead

    @field_serializer("token", when_used="json")
    def _token(self, token: SecretStr) -> str:
        return _reveal(token)
