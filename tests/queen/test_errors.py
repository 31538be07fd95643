"""An unexpected error (a bug) reaches the client as a generic 500 with its request id, never its text."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from rbee.queen.errors import handle_unexpected


async def buggy(request: Request) -> Response:
    raise TypeError("secret internal detail /root/.config")


def test_a_bug_is_a_500_naming_the_request_id_and_its_traceback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = Starlette(routes=[Route("/v1/x", buggy)], exception_handlers={Exception: handle_unexpected})
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        resp = client.get("/v1/x", headers={"X-Request-Id": "req-42"})
        fresh = client.get("/v1/x", headers={"X-Request-Id": "bad id with spaces"})
    assert resp.status_code == 500 and resp.headers["x-request-id"] == "req-42"
    error = resp.json()["error"]
    assert error["code"] == "internal_error" and "req-42" in error["message"] and "TypeError" in error["message"]
    assert "secret" not in resp.text
    assert fresh.headers["x-request-id"] != "bad id with spaces" and fresh.headers["x-request-id"] in fresh.text
    logged = [r for r in caplog.records if "req-42" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
