"""A web page on another local port, opened in the owner's own browser (Chromium, as the queen's Unix user),
tries the admin routes of a keyless queen the ways a page can without a CORS preflight (issue 17, finding 7):
another port is another origin, so none of it lands."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen
from tests.fixtures.browser import Tab

ATTACK = """<!doctype html><title>loading</title><script>
const queen = "http://127.0.0.1:QUEEN_PORT";
const plain = (body) => ({method: "POST", mode: "no-cors", body, headers: {"content-type": "text/plain"}});
const tries = [
  fetch(queen + "/v1/hives", plain('{"alias": "page-box"}')),
  fetch(queen + "/v1/keys", plain('{"name": "page-key"}')),
  fetch(queen + "/v1/hives", {method: "POST", body: '{"alias": "cors-box"}',
                              headers: {"content-type": "application/json"}}),
  fetch(queen + "/v1/admin/shutdown", plain("{}")),
  fetch(queen + "/v1/catalog/" + encodeURIComponent("FILE"), {mode: "no-cors"}),  // a GET sends no Origin
];
Promise.allSettled(tries).then(() => { document.title = "done"; });
</script>"""


@pytest.fixture
def probe_file(tmp_path: Path, tiny_model: Path) -> Path:
    """A model file the page names: a GET of it would add it to the catalog."""
    probe = tmp_path / "probe.gguf"
    probe.write_bytes(tiny_model.read_bytes())
    return probe


@pytest.fixture
def page_server(queen: Queen, probe_file: Path) -> Iterator[str]:
    """Another program's web server on this machine, serving the attack page."""
    page = ATTACK.replace("QUEEN_PORT", str(queen.port)).replace("FILE", str(probe_file)).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_local_port_cannot_manage_the_queen(queen: Queen, page_server: str,
                                                              new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    tab.page.goto(page_server)
    tab.page.wait_for_function("document.title === 'done'", timeout=20_000)
    assert httpx.get(f"{queen.url}/health").status_code == 200  # not shut down
    aliases = [h["alias"] for h in httpx.get(f"{queen.url}/v1/hives").json()]
    assert "page-box" not in aliases and "cors-box" not in aliases
    assert httpx.get(f"{queen.url}/v1/keys").json() == []
    assert "probe" not in [m["name"] for m in httpx.get(f"{queen.url}/v1/catalog").json()]


def test_the_dashboard_itself_still_works_without_a_token(queen: Queen, new_tab: Callable[..., Tab]) -> None:
    tab = new_tab()
    statuses: list[int] = []
    tab.page.on("response", lambda r: statuses.append(r.status) if "/v1/status" in r.url else None)
    tab.page.goto(f"{queen.url}/")
    tab.page.wait_for_timeout(2500)
    assert statuses and all(s == 200 for s in statuses), statuses
