"""The base of every contract: its pydantic schema is built on first use, not at import.

Most shapes are validated rarely or never in a given process (a queen that serves chat never reads a spread
plan), and a built schema costs memory for the process's whole life (about 2 MB for all of them together).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Contract"]


class Contract(BaseModel):
    """A pydantic model whose validator and serializer are built the first time it is used."""

    model_config = ConfigDict(defer_build=True)
