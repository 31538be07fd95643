"""What a web page on another local port, or a body that is not JSON, can do to the admin routes
(issue 17, finding 7): other ports are other origins; bodies must say they are JSON; nesting is bounded."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Queen, free_port

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("origin", ["http://localhost:{other}", "http://127.0.0.1:{other}", "http://localhost",
                                    "https://localhost:{port}0", "http://localhost:notaport"])
def test_another_local_port_is_another_origin(queen: Queen, origin: str) -> None:
    origin = origin.format(other=free_port(), port=queen.port)
    for method, path in (("POST", "/v1/admin/shutdown"), ("POST", "/v1/hives"), ("GET", "/v1/keys"),
                         ("POST", "/v1/chat/completions")):
        resp = httpx.request(method, f"{queen.url}{path}", json={"alias": "from-a-page"}, headers={"Origin": origin})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden_origin", (origin, path)
    assert httpx.get(f"{queen.url}/health").status_code == 200


def test_the_queens_own_origin_is_this_page(queen: Queen) -> None:
    for origin in (f"http://127.0.0.1:{queen.port}", f"http://localhost:{queen.port}"):
        assert httpx.get(f"{queen.url}/v1/status", headers={"Origin": origin}).status_code == 200
    # through a tunnel (ssh -L 8000:localhost:PORT) the page's port is the one the browser connected to
    tunnelled = {"Origin": "http://localhost:8000", "Host": "localhost:8000"}
    assert httpx.get(f"{queen.url}/v1/status", headers=tunnelled).status_code == 200


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_admin_bodies_must_be_json(queen: Queen, kind: str | None) -> None:
    headers = {"content-type": kind} if kind else {}
    resp = httpx.post(f"{queen.url}/v1/hives", content=b'{"alias": "plain-box"}', headers=headers)
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"]["code"] == "unsupported_media_type"
    assert "plain-box" not in [h["alias"] for h in httpx.get(f"{queen.url}/v1/hives").json()]
    ok = httpx.post(f"{queen.url}/v1/hives", content=b'{"alias": "json-box"}',
                    headers={"content-type": "Application/JSON; charset=utf-8"})
    assert ok.status_code in (201, 409), ok.text


@pytest.mark.parametrize("depth", [900, 5000, 200_000])
def test_deeply_nested_json_is_a_400(queen: Queen, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    bodies = {"/v1/chat/completions": '{"model": "tiny", "messages": ' + nested + "}",
              "/v1/hives": '{"alias": ' + nested + "}",
              "/v1/keys": '{"name": "deep", "models": ' + nested + "}"}
    for path, body in bodies.items():
        resp = httpx.post(f"{queen.url}{path}", content=body, headers={"content-type": "application/json"},
                          timeout=30)
        assert resp.status_code == 400, (path, resp.text[:300])
    assert httpx.get(f"{queen.url}/health").status_code == 200
