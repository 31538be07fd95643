"""A small synchronous client for the queen's API."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Generator, Iterator
from typing import Any

import httpx

from rbee.common import paths, tls
from rbee.common.daemon import is_loopback
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


class QueenCredential(httpx.Auth):
    """`Authorization: Bearer` with RBEE_API_KEY, or else the queen's admin token when this user can read
    it (the queen writes it on its first start, so it is looked up on every request)."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = os.environ.get("RBEE_API_KEY", "").strip()
        admin = False
        if not token:
            with contextlib.suppress(OSError):
                token = paths.admin_token_file().read_text().strip()
                admin = bool(token)
        if token:
            _refuse_in_clear(request.url, admin)
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _refuse_in_clear(url: httpx.URL, admin: bool) -> None:
    """No credential crosses the network in clear: never the admin token, and nothing once a cluster CA exists."""
    if url.scheme == "https" or is_loopback(url.host):
        return
    if admin:
        raise CLIError(f"the queen at {url.scheme}://{url.host}:{url.port} speaks plain HTTP: the admin token would "
                       "cross the network in clear. Turn TLS on there (`rbee tls init`) and use an https:// "
                       "RBEE_QUEEN_URL, or reach it through an SSH tunnel (ssh -L 7833:127.0.0.1:7833 HOST).")
    if tls.cluster_ca().is_file():
        raise CLIError(f"RBEE_QUEEN_URL {url.scheme}://{url.host}:{url.port} is plain HTTP, but this cluster uses TLS: "
                       "use its https:// URL, so the API key does not cross the network in clear.")


def _verify(base_url: str) -> ssl.SSLContext | bool:
    """For an https queen: the cluster CA (RBEE_TLS_CA, else `rbee tls init`'s) when there is one."""
    if not base_url.startswith("https:"):
        return True
    return tls.cluster_client_context() or True


class QueenClient:
    def __init__(self, base_url: str, timeout: float | None = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, auth=QueenCredential(),
                                  verify=_verify(self.base_url))

    def close(self) -> None:
        self._http.close()

    def health(self, timeout: float = 2.0) -> QueenHealth | None:
        """The queen's health, None when nothing listens; `NotAQueenError` when something else does."""
        try:
            resp = self._http.get("/health", timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if "SSL" in str(exc) or "certificate" in str(exc).lower():
                raise CLIError(f"the queen at {self.base_url} failed the TLS check ({exc}). Its certificate must "
                               f"come from the cluster CA ({paths.tls_dir() / 'ca.pem'}, or RBEE_TLS_CA); "
                               "a queen without TLS needs an http:// URL (RBEE_QUEEN_URL).") from exc
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

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn transport failures into one-line messages (the queen gone, stalled, or garbled)."""
        try:
            yield
        except httpx.ConnectError as exc:
            raise CLIError(f"cannot reach the queen at {self.base_url}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise CLIError(f"the queen at {self.base_url} did not answer in time ({type(exc).__name__})") from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise CLIError(f"the queen at {self.base_url} stopped answering ({type(exc).__name__}); "
                           f"see {paths.queen_log_file()}") from exc

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._errors():
            resp = self._http.request(method, path, **kwargs)
            return self._check(resp).json()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_text(self, path: str) -> str:
        """A text answer (e.g. /metrics), with the same errors as `request`."""
        with self._errors():
            return self._check(self._http.get(path)).text

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def upload(self, path: str, fields: dict[str, str], files: dict[str, Any], **kwargs: Any) -> httpx.Response:
        """POST a multipart form (an audio file, say); the checked response, whatever its type."""
        with self._errors():
            return self._check(self._http.post(path, data=fields, files=files, **kwargs))

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def has_model(self, name: str) -> bool:
        """Whether `GET /v1/models/{name}` knows it (a catalog name with its file present)."""
        with self._errors():
            return self._http.get(f"/v1/models/{name}").status_code == 200

    def model_kind(self, name: str) -> str | None:
        """What `GET /v1/models/{name}` says the model is for (text, image...); None when it does not know it."""
        with self._errors():
            resp = self._http.get(f"/v1/models/{name}")
        return str(resp.json().get("kind", "text")) if resp.status_code == 200 else None

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[str]:
        """The lines of a streamed response, as they arrive."""
        with self._errors(), self._http.stream(method, path, timeout=httpx.Timeout(10.0, read=None),
                                               **kwargs) as resp:
            self._check(resp)
            yield from resp.iter_lines()

    def job_events(self, job_id: str) -> Iterator[JobEvent]:
        for line in self.stream_lines("GET", f"/v1/jobs/{job_id}/events"):
            if line.startswith("data:"):
                event = JobEvent.model_validate_json(line[5:])
                yield event
                if event.type.terminal:
                    return
