"""API keys, access rules, limits, usage, audit and request validation, against a real queen and workers."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Queen, free_port

CHAT = [{"role": "user", "content": "hello there"}]


def _admin(queen: Queen) -> dict[str, str]:
    token = (queen.home / "config" / "admin.token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _create_key(queen: Queen, *args: str) -> str:
    result = queen.cli("key", "create", *args, check=True)
    secret = result.stdout.strip()
    assert secret.startswith("rbee-") and len(secret) > 40, result.stdout
    return secret


def _chat(queen: Queen, key: str | None, model: str = "tiny", **extra: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{queen.url}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": model, "messages": CHAT, "max_tokens": 4, **extra})


def _lan_address() -> str | None:
    """An address of this machine that is not loopback (a request to it comes from a non-loopback peer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture
def keyed(make_queen: Callable[..., Queen], tiny_model: Path) -> Queen:
    """A queen that has loaded the tiny model (keyless, from this machine), before any key exists."""
    queen = make_queen().start()
    assert _chat(queen, None, model=str(tiny_model)).status_code == 200
    return queen


def test_keyless_until_the_first_key_then_every_request_needs_one(keyed: Queen) -> None:
    assert _chat(keyed, "anything-goes-while-keyless").status_code == 200  # editors always send some key
    secret = _create_key(keyed, "--name", "laptop")
    missing = _chat(keyed, None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "rbee key create" in missing.json()["error"]["message"]
    assert _chat(keyed, "rbee-not-a-real-key").status_code == 401
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=secret, max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    assert "tiny" in [m.id for m in client.models.list().data]
    # A client key may not manage the queen; the CLI (admin token) still may.
    for method, path in (("GET", "/v1/keys"), ("GET", "/v1/status"), ("POST", "/v1/admin/shutdown"),
                         ("GET", "/v1/audit"), ("DELETE", "/v1/workers/x")):
        refused = httpx.request(method, f"{keyed.url}{path}", headers={"Authorization": f"Bearer {secret}"})
        assert refused.status_code == 403, (method, path)
        assert "admin token" in refused.json()["error"]["message"]
    listed = json.loads(keyed.cli("key", "list", "--json", check=True).stdout)
    assert [(k["name"], k["revoked_at"]) for k in listed] == [("laptop", None)]
    assert secret not in json.dumps(listed) and listed[0]["prefix"] == secret[:12]
    # The secret is stored as a digest only.
    assert secret.encode() not in (keyed.home / "state" / "queen.sqlite").read_bytes()
    keyed.cli("key", "revoke", "laptop", check=True)
    revoked = _chat(keyed, secret)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]


def test_a_key_limited_to_models_sees_and_uses_only_those(keyed: Queen, tiny_stop_model: Path) -> None:
    assert _chat(keyed, None, model=str(tiny_stop_model)).status_code == 200  # a second model in the catalog
    secret = _create_key(keyed, "--name", "only-tiny", "--models", "tiny")
    models = httpx.get(f"{keyed.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    refused = _chat(keyed, secret, model="tiny-stop")
    assert refused.status_code == 403
    assert refused.json()["error"]["param"] == "model" and refused.json()["error"]["code"] == "model_not_allowed"
    assert _chat(keyed, secret).status_code == 200
    by_path = _chat(keyed, secret, model=str(tiny_stop_model))  # a key may not make the hive open files
    assert by_path.status_code == 403 and "file path" in by_path.json()["error"]["message"]


def test_rate_limits_answer_429_with_retry_after(keyed: Queen) -> None:
    rpm = _create_key(keyed, "--name", "slow", "--rpm", "2")
    assert [_chat(keyed, rpm).status_code for _ in range(2)] == [200, 200]
    limited = _chat(keyed, rpm)
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    tpm = _create_key(keyed, "--name", "few-tokens", "--tpm", "10")
    assert _chat(keyed, tpm, max_tokens=8).status_code == 200  # the prompt alone is more than 10 tokens
    over = _chat(keyed, tpm)
    assert over.status_code == 429 and "10 tokens per minute" in over.json()["error"]["message"]


def test_usage_counts_requests_and_tokens_per_key_and_model_streams_included(keyed: Queen) -> None:
    secret = _create_key(keyed, "--name", "meter")
    assert _chat(keyed, secret, max_tokens=5).json()["usage"]["completion_tokens"] == 5
    with httpx.stream("POST", f"{keyed.url}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                      json={"model": "tiny", "messages": CHAT, "max_tokens": 7, "stream": True}, timeout=60) as s:
        assert s.status_code == 200
        s.read()
    assert _chat(keyed, secret, model="no-such-model").status_code == 404
    rows = json.loads(keyed.cli("key", "usage", "meter", "--json", check=True).stdout)
    by_model = {r["model"]: r for r in rows}
    assert by_model["tiny"]["requests"] == 2 and by_model["tiny"]["errors"] == 0
    assert by_model["tiny"]["completion_tokens"] == 12 and by_model["tiny"]["prompt_tokens"] > 10
    assert by_model["(unknown)"]["errors"] == 1  # names no hive knows are not kept one by one
    listed = json.loads(keyed.cli("key", "list", "--json", check=True).stdout)
    assert listed[0]["last_used_at"] is not None


def test_an_expired_key_is_refused(keyed: Queen) -> None:
    created = httpx.post(f"{keyed.url}/v1/keys", headers=_admin(keyed),
                         json={"name": "brief", "expires_at": time.time() + 1.0})
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert _chat(keyed, secret).status_code == 200
    time.sleep(1.2)
    expired = _chat(keyed, secret)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    past = httpx.post(f"{keyed.url}/v1/keys", headers=_admin(keyed), json={"name": "old", "expires_at": 1.0})
    assert past.status_code == 400 and past.json()["error"]["param"] == "expires_at"


@pytest.mark.parametrize("spec, param", [
    ({"name": "has space"}, "name"),
    ({"name": "x", "rpm": 0}, "rpm"),
    ({"name": "x", "models": []}, "models"),
    ({}, "name"),
])
def test_bad_key_requests_name_the_field(queen: Queen, spec: dict[str, object], param: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/keys", json=spec)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


def test_duplicate_key_names_and_unknown_revokes_are_clear(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen().start()
    _create_key(queen, "--name", "twice")
    again = queen.cli("key", "create", "--name", "twice")
    assert again.returncode == 1 and "already a key named 'twice'" in again.stderr
    unknown = queen.cli("key", "revoke", "nobody")
    assert unknown.returncode == 1 and "no API key named 'nobody'" in unknown.stderr
    assert "Traceback" not in again.stderr + unknown.stderr


def test_the_audit_log_records_who_did_what_from_where(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen().start()
    _create_key(queen, "--name", "audited", "--rpm", "5")
    queen.cli("key", "revoke", "audited", check=True)
    assert httpx.post(f"{queen.url}/v1/hives", json={"alias": "gpu-box"}).status_code == 201  # keyless: owner
    entries = json.loads(queen.cli("audit", "--json", check=True).stdout)
    assert [(e["action"], e["target"], e["actor"], e["source"]) for e in entries] == [
        ("key.create", "audited", "admin", "127.0.0.1"),
        ("key.revoke", "audited", "admin", "127.0.0.1"),
        ("hive.enrol", "gpu-box", "owner", "127.0.0.1"),
    ]
    assert "rpm=5" in entries[0]["detail"]
    only_keys = json.loads(queen.cli("audit", "--json", "--action", "key.*", check=True).stdout)
    assert [e["action"] for e in only_keys] == ["key.create", "key.revoke"]
    table = queen.cli("audit", check=True).stdout
    assert "key.create" in table and "audited" in table
    with sqlite3.connect(queen.home / "state" / "queen.sqlite") as db, pytest.raises(sqlite3.DatabaseError,
                                                                                      match="append-only"):
        db.execute("UPDATE audit SET actor = 'someone else'")


def test_an_x_forwarded_for_header_changes_neither_who_may_call_nor_the_audited_source(
        make_queen: Callable[..., Queen]) -> None:
    # The queen is no reverse proxy's backend: the address it checks and records is the connection's own.
    queen = make_queen().start()
    forged = {"X-Forwarded-For": "203.0.113.7"}
    models = httpx.get(f"{queen.url}/v1/models", headers=forged)
    assert models.status_code == 200, models.text  # still this machine, served keyless
    assert httpx.post(f"{queen.url}/v1/hives", json={"alias": "gpu-box"}, headers=forged).status_code == 201
    entries = json.loads(queen.cli("audit", "--json", check=True).stdout)
    assert [(e["action"], e["source"]) for e in entries] == [("hive.enrol", "127.0.0.1")]


def test_a_queen_on_the_network_needs_keys_unless_told_otherwise(make_queen: Callable[..., Queen]) -> None:
    address = _lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    queen = make_queen()
    queen.home.mkdir(parents=True)
    refused = queen.cli("queen", "start", "--foreground", "--host", address, "--port", str(queen.port), timeout=30)
    assert refused.returncode == 1 and "without API keys" in refused.stderr and "Traceback" not in refused.stderr
    # With a key: the network gets the API with that key, and nothing without it.
    queen.start()
    secret = _create_key(queen, "--name", "lan")
    queen.stop()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--host", "0.0.0.0",
                             "--port", str(port)], env=queen.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://{address}:{port}"
        _wait_up(url)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert httpx.get(f"{url}/v1/keys", headers={"Authorization": f"Bearer {secret}"}).status_code == 403
    finally:
        proc.terminate()
        proc.wait(20)
    # --insecure-no-auth: served without a key, with a warning on every start.
    insecure = subprocess.Popen([sys.executable, "-m", "rbee", "queen", "start", "--foreground", "--host", "0.0.0.0",
                                 "--port", str(port), "--insecure-no-auth"], env=queen.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_up(f"http://{address}:{port}")
        assert httpx.get(f"http://{address}:{port}/v1/models").status_code == 200
    finally:
        insecure.terminate()
        out = insecure.communicate(timeout=20)[0].decode()
    assert "INSECURE" in out


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url}")


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "messages": CHAT, "max_tokens": 10**9}, "max_tokens"),
    ({"model": "tiny", "messages": CHAT, "temperature": 2.5}, "temperature"),
    ({"model": "tiny", "messages": CHAT, "temperature": -0.1}, "temperature"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "tiny", "messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "", "messages": CHAT}, "model"),
    ({"model": "../../etc/passwd", "messages": CHAT}, "model"),
    ({"messages": CHAT}, "model"),
])
def test_bad_requests_are_400s_that_name_the_field(queen: Queen, body: dict[str, object], param: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code in (400, 404), resp.text
    error = resp.json()["error"]
    assert error["param"] == param, error


def test_bodies_over_the_limit_are_413_with_or_without_a_length(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen(RBEE_MAX_BODY_MB="1").start()
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (2 * 2**20)}]}).encode()
    sized = httpx.post(f"{queen.url}/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert sized.status_code == 413 and sized.json()["error"]["code"] == "request_too_large"

    def chunks() -> object:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    streamed = httpx.post(f"{queen.url}/v1/chat/completions", content=chunks(),  # type: ignore[arg-type]
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.get(f"{queen.url}/health").status_code == 200


@pytest.mark.parametrize("name", ["~no-such-user-here/m.gguf", "/" + "x" * 300 + ".gguf", "./%00.gguf"])
def test_names_no_file_can_have_are_404_not_500(queen: Queen, name: str) -> None:
    # Found by fuzzing: a path with an unknown ~user, a name too long for the file system, a NUL byte.
    resp = httpx.get(f"{queen.url}/v1/catalog/{name}")
    assert resp.status_code == 404, resp.text


@pytest.mark.parametrize("headers", [{"Origin": "null"}, {"Origin": "https://evil.example"}, {"Host": "[::1"},
                                     {"Host": "evil.example"}])
def test_web_pages_cannot_use_a_keyless_queen(queen: Queen, headers: dict[str, str]) -> None:
    # A sandboxed iframe or a file:// page sends `Origin: null`; a text/plain POST needs no CORS preflight.
    resp = httpx.post(f"{queen.url}/v1/admin/shutdown", headers={"content-type": "text/plain", **headers})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden_origin"
    assert httpx.get(f"{queen.url}/health").status_code == 200


def test_a_key_cannot_reach_a_file_by_padding_its_path(keyed: Queen, tiny_stop_model: Path) -> None:
    secret = _create_key(keyed, "--name", "padder")
    for name in (f" {tiny_stop_model}", f"\u3000{tiny_stop_model}", f"{tiny_stop_model} "):
        refused = _chat(keyed, secret, model=name)
        assert refused.status_code == 403 and "file path" in refused.json()["error"]["message"], name


def test_an_expiry_that_is_not_a_time_is_refused(queen: Queen) -> None:
    for value in ("NaN", "Infinity"):
        body = '{"name": "odd-' + value.lower() + '", "expires_at": ' + value + "}"
        resp = httpx.post(f"{queen.url}/v1/keys", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "expires_at"
