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


def test_another_user_cannot_make_the_queen_open_a_file(loaded: Queen, other_user: OtherUser,
                                                        tmp_path: Path, tiny_model: Path) -> None:
    private = tmp_path / "root-only.gguf"
    private.write_bytes(tiny_model.read_bytes())
    private.chmod(0o600)
    answers = []
    for model in ("/etc/shadow", "/no/such/file.gguf", str(private), f" {private}", "../../etc/shadow",
                  "~root/.bashrc", "x.gguf"):
        answer = other_user.request("POST", f"{loaded.url}/v1/chat/completions",
                                    {"model": model, "messages": CHAT, "max_tokens": 2})
        assert answer.status == 403, (model, answer.body)
        answers.append(answer.message)
        assert "root:" not in answer.body
    assert len(set(answers)) == 1 and "file path" in answers[0]  # existing or not, readable or not: alike


def test_errors_about_files_never_quote_them(loaded: Queen) -> None:
    resp = httpx.post(f"{loaded.url}/v1/chat/completions", timeout=30,
                      json={"model": "/etc/shadow", "messages": CHAT, "max_tokens": 2})
    assert resp.status_code in (400, 404, 503), resp.text
    assert "not a GGUF model file" in resp.json()["error"]["message"]
    assert "root:" not in resp.text and "0x" not in resp.text


def _ready(queen: Queen) -> list[object]:
    return [w["id"] for w in queen.workers() if w["state"] == "ready"]


def test_another_user_cannot_pin_a_worker_forever(make_queen: Callable[..., Queen], tiny_model: Path,
                                                  other_user: OtherUser) -> None:
    queen = make_queen(RBEE_KEY_MAX_KEEP_ALIVE="1s").start()
    chat = {"model": str(tiny_model), "messages": CHAT, "max_tokens": 2, "keep_alive": 0}
    assert httpx.post(f"{queen.url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
    assert wait_for(lambda: _ready(queen) == [], 10)
    chat.update(model="tiny", keep_alive=-1)
    assert other_user.request("POST", f"{queen.url}/v1/chat/completions", chat).status == 200
    assert _ready(queen)
    assert wait_for(lambda: _ready(queen) == [], 10)  # held for RBEE_KEY_MAX_KEEP_ALIVE, not forever
    assert httpx.post(f"{queen.url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
    queen.wait_reaper_passes(3)  # past RBEE_KEY_MAX_KEEP_ALIVE's 1 s
    assert _ready(queen)  # the queen's own user may pin it


def test_state_files_are_the_queens_users_only(loaded: Queen) -> None:
    state = loaded.home / "state"
    folders = [state, state / "hive", state / "hive" / "workers"]
    files = [state / "queen.sqlite", state / "hive" / "catalog.sqlite", *(state / "hive" / "workers").glob("*.log")]
    files += [p for p in state.rglob("*.sqlite-*")]
    assert len(files) >= 3
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {str(p): "0o700" for p in folders}
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {str(p): "0o600" for p in files}


def test_an_api_key_cannot_pin_a_worker_forever(make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = make_queen(RBEE_KEY_MAX_KEEP_ALIVE="1s").start()
    chat = {"model": str(tiny_model), "messages": CHAT, "max_tokens": 2, "keep_alive": 0}
    assert httpx.post(f"{queen.url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
    secret = queen.cli("key", "create", "--name", "pinner", check=True).stdout.strip()
    admin = {"Authorization": f"Bearer {_token(queen)}"}
    assert wait_for(lambda: not [w for w in httpx.get(f"{queen.url}/v1/workers", headers=admin).json()
                                 if w["state"] == "ready"], 10)
    chat.update(model="tiny", keep_alive="-1")
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json=chat, timeout=60,
                      headers={"Authorization": f"Bearer {secret}"})
    assert resp.status_code == 200, resp.text
    assert wait_for(lambda: not [w for w in httpx.get(f"{queen.url}/v1/workers", headers=admin).json()
                                 if w["state"] == "ready"], 10)


def test_another_user_cannot_pull_or_delete_through_the_ollama_api(loaded: Queen, other_user: OtherUser) -> None:
    url = loaded.url
    for method, path, body in (("POST", "/api/pull", {"model": "hf.co/rbee-test/tiny-GGUF:Q4_K_M"}),
                               ("DELETE", "/api/delete", {"model": "tiny"})):
        answer = other_user.request(method, f"{url}{path}", body)
        assert answer.status in (401, 403), (path, answer.body)
        assert "admin token" in answer.body, (path, answer.body)
    assert "tiny" in {m["name"] for m in httpx.get(f"{url}/v1/catalog", timeout=10).json()}  # nothing was removed
    assert not [j for j in httpx.get(f"{url}/v1/jobs", timeout=10).json() if j["kind"] == "model.pull"]
