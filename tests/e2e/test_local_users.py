"""Another Unix user on the queen's machine, against a keyless queen on 127.0.0.1: it may use the OpenAI
routes by model name, and nothing else, unless it brings the admin token (issue 17, findings 3 and 4)."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen, wait_for
from tests.fixtures.other_user import OtherUser

CHAT = [{"role": "user", "content": "hello there"}]

# What a keyless local user must not do: every route but the OpenAI ones, reads included.
ADMIN_CALLS: list[tuple[str, str, object]] = [
    ("POST", "/v1/keys", {"name": "stolen"}),
    ("GET", "/v1/keys", None),
    ("DELETE", "/v1/keys/anything", None),
    ("POST", "/v1/hives", {"alias": "evil-box"}),
    ("GET", "/v1/hives", None),
    ("DELETE", "/v1/hives/localhost", None),
    ("POST", "/v1/jobs", {"kind": "model.pull", "model": "/etc/shadow"}),
    ("GET", "/v1/jobs", None),
    ("DELETE", "/v1/workers/x", None),
    ("GET", "/v1/workers", None),
    ("GET", "/v1/status", None),
    ("GET", "/v1/catalog", None),
    ("DELETE", "/v1/catalog/tiny", None),
    ("PUT", "/v1/settings/models/tiny", {"keep_alive": -1}),
    ("DELETE", "/v1/settings/models/tiny", None),
    ("GET", "/v1/usage", None),
    ("GET", "/v1/audit", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/no-such-route", None),
    ("POST", "/v1/admin/shutdown", None),
]


def _token(queen: Queen) -> str:
    return (queen.home / "config" / "admin.token").read_text().strip()


@pytest.fixture
def loaded(make_queen: Callable[..., Queen], tiny_model: Path) -> Queen:
    """A keyless queen whose owner (this test, the queen's own user) has loaded the tiny model."""
    queen = make_queen().start()
    resp = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                      json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 2})
    assert resp.status_code == 200, resp.text
    return queen


def test_another_user_may_chat_but_not_manage_the_queen(loaded: Queen, other_user: OtherUser) -> None:
    url = loaded.url
    chat = other_user.request("POST", f"{url}/v1/chat/completions",
                              {"model": "tiny", "messages": CHAT, "max_tokens": 2})
    assert chat.status == 200, chat.body
    assert other_user.request("GET", f"{url}/v1/models").status == 200
    for method, path, body in ADMIN_CALLS:
        answer = other_user.request(method, f"{url}{path}", body)
        assert answer.status == 401, (method, path, answer.body)
        assert answer.json()["error"]["code"] == "admin_token_required"  # type: ignore[index]
        assert "admin token" in answer.message and path in answer.message
    assert httpx.get(f"{url}/health").status_code == 200  # still up
    assert httpx.get(f"{url}/v1/keys").json() == []  # nothing was created
    assert [h["alias"] for h in httpx.get(f"{url}/v1/hives").json()] == ["localhost"]


def test_another_user_with_the_admin_token_is_the_admin(loaded: Queen, other_user: OtherUser) -> None:
    url, token = loaded.url, _token(loaded)
    assert other_user.request("POST", f"{url}/v1/hives", {"alias": "gpu-box"}, token=token).status == 201
    assert other_user.request("GET", f"{url}/v1/status", token=token).status == 200
    entries = json.loads(loaded.cli("audit", "--json", check=True).stdout)
    assert [(e["action"], e["actor"]) for e in entries] == [("hive.enrol", "admin")]
    assert other_user.request("POST", f"{url}/v1/admin/shutdown", token=token).status == 202
    assert loaded.proc is not None and wait_for(lambda: loaded.proc.poll() is not None, 30)  # type: ignore[union-attr]


def test_a_bad_token_is_not_the_admin_either(loaded: Queen, other_user: OtherUser) -> None:
    answer = other_user.request("POST", f"{loaded.url}/v1/keys", {"name": "x"}, token="rbee-admin-guessed")
    assert answer.status == 401 and answer.json()["error"]["code"] == "admin_token_required"  # type: ignore[index]


def test_the_queens_own_user_is_the_admin_without_a_token(loaded: Queen) -> None:
    assert httpx.post(f"{loaded.url}/v1/hives", json={"alias": "gpu-box"}).status_code == 201
    entries = json.loads(loaded.cli("audit", "--json", check=True).stdout)
    assert [(e["action"], e["actor"]) for e in entries] == [("hive.enrol", "owner")]


def test_the_admin_token_file_is_the_queens_users_only(loaded: Queen) -> None:
    mode = stat.S_IMODE((loaded.home / "config" / "admin.token").stat().st_mode)
    assert mode == 0o600
