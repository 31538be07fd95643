"""The queen's own (embedded) hive as the source of a copy: its shares, served on the queen's port.

    GET /v1/hive/shares/{share_id}/files/{index}   a shared file (Range), exactly as a remote hive serves it

A remote hive that needs a model only the queen's machine holds reads it here, at its `queen_url`. The rules
are the hive's own (rbee/hive/shares.py, the same code): only to the peer address the share was opened for,
only with that share's token (not the join token, not an API key, not the admin token), files by index,
only files inside the models folder or added by path. The guard (rbee/queen/guard.py) lets this one path
through, body-less, to that check; nothing else of the queen's API is reachable with a share's token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.common.error_responses import error_response
from rbee.hive.service import Hive
from rbee.queen.state import queen_state

LOCAL_ALIAS = "localhost"


async def share_file(request: Request) -> Response:
    hive = queen_state(request).hives.get(LOCAL_ALIAS)
    if not isinstance(hive, Hive):  # RBEE_LOCAL_HIVE=0: no share can exist, answered like an unknown one
        return error_response(401, "A valid share token is required.", code="invalid_token")
    return hive.shares.serve(request)


routes = [Route("/v1/hive/shares/{share_id}/files/{index:int}", share_file, methods=["GET", "HEAD"])]
