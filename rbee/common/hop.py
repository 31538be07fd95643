"""The header that marks the queen's own outgoing traffic, so that it never reaches a queen as a client.

The queen sends `X-Rbee-Hop` on every request it makes to a worker or a hive. A queen refuses any
request that carries it (508 `loop_detected`): a worker URL that leads back to a queen, by mistake or
by a hostile hive, ends there after one hop instead of recursing, and the queen's own request is
never taken for a caller on this machine.
"""

from __future__ import annotations

HOP_HEADER = "X-Rbee-Hop"
HOP_VALUE = "queen"
HOP = {HOP_HEADER: HOP_VALUE}
