"""What every command gets: the output, and a client for the queen (started on demand)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rbee.common import settings
from rbee.contracts.status import QueenHealth
from rbee.keeper.client import QueenClient
from rbee.keeper.daemon import ensure_queen, probe
from rbee.keeper.output import Output


@dataclass
class App:
    out: Output = field(default_factory=Output)
    queen_url: str = field(default_factory=settings.queen_url)
    _client: QueenClient | None = None

    @property
    def client(self) -> QueenClient:
        if self._client is None:
            self._client = QueenClient(self.queen_url)
        return self._client

    def queen(self) -> QueenClient:
        """A client for a running queen, starting one in the background if needed."""
        ensure_queen(self.client, self.out)
        return self.client

    def running_queen(self) -> QueenHealth | None:
        return probe(self.client)
