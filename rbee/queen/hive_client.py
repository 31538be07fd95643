"""The queen's HTTP client to one remote hive's API (rbee/hive/app.py), under the hive's join token.

Every call either returns the body of a 2xx answer or raises `HiveCallFailed` with what the hive said (its
rbee error message and status) or why it could not be asked (no answer, a certificate that fails the check).
What such a failure means to the queen is rbee/queen/hive_errors.py's business, not this module's.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from rbee.common import tls
from rbee.common.hop import HOP
from rbee.contracts.jobs import JobEvent

if TYPE_CHECKING:  # imported when the first client to a remote hive is made: a queen without any does without it
    import httpx


class HiveCallFailed(RuntimeError):
    """A call to a remote hive failed: `status` is its HTTP status when it answered, None when it did not."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def no_route(self) -> bool:
        """A 404 that is not rbee's JSON error: the hive has no such route (it runs an older rbee)."""
        return self.status == 404 and str(self) == "HTTP 404"


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}"


class HiveClient:
    def __init__(self, alias: str, base_url: Callable[[], str], token: str, context: ssl.SSLContext | None) -> None:
        self.alias = alias
        self._base_url = base_url  # the hive's address may change with a new registration
        self.token = token
        self.tls = context
        self.http = self._new(token)

    def _new(self, token: str) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), verify=self.tls or True,
                                 headers={"Authorization": f"Bearer {token}", **HOP})

    @property
    def base_url(self) -> str:
        return self._base_url()

    def use_token(self, token: str) -> None:
        if token != self.token:
            self.token = token
            self.http.headers["Authorization"] = f"Bearer {token}"

    async def use_tls(self, context: ssl.SSLContext | None) -> None:
        """Check the hive with `context` from now on (its certificate was re-issued)."""
        self.tls, old = context, self.http
        self.http = self._new(self.token)
        await old.aclose()

    async def call(self, method: str, path: str, body: str | None = None, wait_s: float | None = None) -> bytes:
        import httpx

        try:
            resp = await self.http.request(
                method, f"{self.base_url}{path}", content=body,
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=wait_s if wait_s is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            problem = tls.certificate_problem(exc)
            if problem is not None:
                raise HiveCallFailed(f"hive '{self.alias}' at {self.base_url} failed the TLS check: {problem}. Its "
                                     "certificate must come from this cluster's CA: after `rbee tls init --force`, "
                                     f"run `rbee tls rotate` (or `rbee hive install {self.alias}`).") from exc
            raise HiveCallFailed(f"hive '{self.alias}' at {self.base_url} did not answer "
                                 f"({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            raise HiveCallFailed(_message(resp), resp.status_code)
        return resp.content

    async def events(self, job_id: str, after: int) -> AsyncIterator[JobEvent]:
        """A hive job's events after `after`, as they come (no read timeout: a job never ends by silence).
        `HiveCallFailed` when the hive answers with an error; a dropped stream raises httpx's error."""
        import httpx

        headers = {"Last-Event-ID": str(after)} if after >= 0 else None
        async with self.http.stream("GET", f"{self.base_url}/v1/hive/jobs/{job_id}/events", headers=headers,
                                    timeout=httpx.Timeout(30.0, connect=5.0, read=None)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise HiveCallFailed(_message(resp), resp.status_code)
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    yield JobEvent.model_validate_json(line[5:])

    async def close(self) -> None:
        await self.http.aclose()
