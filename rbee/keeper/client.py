"""A small synchronous client for the queen's API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from rbee.contracts.jobs import JobEvent
from rbee.contracts.status import QueenHealth
from rbee.keeper.output import CLIError


class NotAQueenError(Exception):
    """Something answers on the queen's port, but it is not an rbee queen."""


def error_message(resp: httpx.Response) -> str:
    """The `error.message` of an OpenAI-shaped error, or the raw text."""
    try:
        resp.read()
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:500] or f"HTTP {resp.status_code}"


class QueenClient:
    def __init__(self, base_url: str, timeout: float | None = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def health(self, timeout: float = 2.0) -> QueenHealth | None:
        """The queen's health, None when nothing listens; `NotAQueenError` when something else does."""
        try:
            resp = self._http.get("/health", timeout=timeout)
        except httpx.ConnectError:
            return None
        except httpx.HTTPError as exc:
            raise NotAQueenError(f"{type(exc).__name__}") from exc
        try:
            data = resp.json()
            if data.get("service") != "rbee-queen":
                raise ValueError
            return QueenHealth.model_validate(data)
        except (ValueError, AttributeError) as exc:
            raise NotAQueenError(f"HTTP {resp.status_code} from /health") from exc

    def _check(self, resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            raise CLIError(error_message(resp))
        return resp

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise CLIError(f"cannot reach the queen at {self.base_url}: {exc}") from exc
        return self._check(resp).json()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def has_model(self, name: str) -> bool:
        """Whether `GET /v1/models/{name}` knows it (a catalog name with its file present)."""
        return self._http.get(f"/v1/models/{name}").status_code == 200

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """Yield the open response once; it is closed when the iterator is."""
        with self._http.stream(method, path, timeout=httpx.Timeout(10.0, read=None), **kwargs) as resp:
            self._check(resp)
            yield resp

    def job_events(self, job_id: str) -> Iterator[JobEvent]:
        for resp in self.stream("GET", f"/v1/jobs/{job_id}/events"):
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    event = JobEvent.model_validate_json(line[5:])
                    yield event
                    if event.type.terminal:
                        return
