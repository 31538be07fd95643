"""Self-tests of ``tests.fixtures.fake_hub`` against the real ``huggingface_hub`` library.

``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_HOME`` once, at import, so every library interaction runs in a
fresh interpreter (``run_hf``) with those set; the protocol-level checks talk to the fake directly with urllib.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.fake_hub import FakeHub, HubFile

REPO = "acme/tiny"
TOKEN = "hf_secret_token"
CHUNK = 10 * 1024 * 1024  # huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE: http_get writes (and resumes) per chunk
BIG = hashlib.sha256(b"seed").digest() * (12 * 1024 * 1024 // 32)  # 12 MiB, more than one download chunk
WEIGHTS = bytes(range(256)) * 1000
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}'

PRELUDE = """
import json, os, sys
def out(**kw):
    print(json.dumps(kw))
def error_of(fn):
    try:
        fn()
    except Exception as e:
        return [c.__name__ for c in type(e).__mro__]
    return None
"""


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.add_repo(
            REPO,
            [HubFile("model.gguf", WEIGHTS), HubFile("config.json", CONFIG, lfs=False), HubFile("sub/dir/w.bin", b"w")],
        )
        yield hub


def run_hf(hub: FakeHub, tmp_path: Path, code: str, **env: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter pointed at ``hub``; it reports by calling ``out(...)`` last."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    environ.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",  # belt and braces: the fake never advertises Xet anyway
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


def gets(hub: FakeHub, path: str) -> list[str | None]:
    """The Range headers of the GETs of one file (None: no Range)."""
    return [rng for method, target, rng in hub.requests if method == "GET" and target.endswith(f"/resolve/main/{path}")]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- against huggingface_hub -------------------------------------------------------------------------------------


def test_model_info_with_files_metadata(hub: FakeHub, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, {"model.gguf": b"v2"}, revision="v2")
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import HfApi
        def info(**kw):
            i = HfApi().model_info({REPO!r}, files_metadata=True, **kw)
            return {{"sha": i.sha, "gated": i.gated, "files": {{
                s.rfilename: [s.size, s.blob_id, s.lfs and s.lfs.sha256, s.lfs and s.lfs.size] for s in i.siblings}}}}
        plain = HfApi().model_info({REPO!r})
        out(main=info(), v2=info(revision="v2"), by_sha=info(revision={commit!r}),
            plain=[s.rfilename for s in plain.siblings], plain_size=plain.siblings[0].size)
        """,
    )
    files = res["main"]["files"]
    assert files["model.gguf"][0] == len(WEIGHTS)
    assert files["model.gguf"][2:] == [sha256(WEIGHTS), len(WEIGHTS)]
    assert files["config.json"][:1] == [len(CONFIG)] and files["config.json"][2:] == [None, None]
    assert files["config.json"][1] == hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    assert len(res["main"]["sha"]) == 40 and res["main"]["gated"] is False
    assert res["v2"]["sha"] == res["by_sha"]["sha"] == commit != res["main"]["sha"]
    assert res["v2"]["files"] == {"model.gguf": [2, res["v2"]["files"]["model.gguf"][1], sha256(b"v2"), 2]}
    assert res["plain"] == ["config.json", "model.gguf", "sub/dir/w.bin"] and res["plain_size"] is None
    assert ("GET", f"/api/models/{REPO}/revision/v2?blobs=true", None) in hub.requests


def test_list_repo_tree_and_files(hub: FakeHub, tmp_path: Path) -> None:
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import HfApi
        api = HfApi()
        def tree(*args, **kw):
            return [[type(e).__name__, e.path, getattr(e, "size", None), bool(getattr(e, "lfs", None))]
                    for e in api.list_repo_tree({REPO!r}, *args, **kw)]
        out(recursive=tree(recursive=True), top=tree(), sub=tree("sub"), files=api.list_repo_files({REPO!r}))
        """,
    )
    assert res["recursive"] == [
        ["RepoFolder", "sub", None, False],
        ["RepoFolder", "sub/dir", None, False],
        ["RepoFile", "config.json", len(CONFIG), False],
        ["RepoFile", "model.gguf", len(WEIGHTS), True],
        ["RepoFile", "sub/dir/w.bin", 1, True],
    ]
    assert [e[1] for e in res["top"]] == ["sub", "config.json", "model.gguf"]
    assert [e[1] for e in res["sub"]] == ["sub/dir"]
    assert res["files"] == ["config.json", "model.gguf", "sub/dir/w.bin"]


def test_hf_hub_url_and_file_metadata(hub: FakeHub, tmp_path: Path) -> None:
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        def meta(name):
            m = get_hf_file_metadata(hf_hub_url({REPO!r}, name))
            return [m.commit_hash, m.etag, m.size, m.location, m.xet_file_data]
        out(url=hf_hub_url({REPO!r}, "sub/dir/w.bin", revision="main"), lfs=meta("model.gguf"), git=meta("config.json"))
        """,
    )
    assert res["url"] == f"{hub.url}/{REPO}/resolve/main/sub/dir/w.bin"
    commit = res["lfs"][0]
    assert res["lfs"] == [commit, sha256(WEIGHTS), len(WEIGHTS), f"{hub.url}/{REPO}/resolve/main/model.gguf", None]
    assert res["git"][1] == hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    assert res["git"][2] == len(CONFIG)


def test_hf_hub_download_is_byte_identical(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo(REPO, {"model.gguf": b"other"}, revision="v2")
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import hf_hub_download
        a = hf_hub_download({REPO!r}, "model.gguf", local_dir="ld")
        b = hf_hub_download({REPO!r}, "sub/dir/w.bin", revision="main", local_dir="ld")
        c = hf_hub_download({REPO!r}, "config.json")  # into the HF_HOME cache
        d = hf_hub_download({REPO!r}, "model.gguf", revision="v2", local_dir="ld2")
        out(paths=[a, b, c, d])
        """,
    )
    a, b, c, d = map(Path, res["paths"])
    assert a == tmp_path / "ld" / "model.gguf" and a.read_bytes() == WEIGHTS
    assert b == tmp_path / "ld" / "sub" / "dir" / "w.bin" and b.read_bytes() == b"w"
    assert c.is_relative_to(tmp_path / "hf_home" / "hub") and c.read_bytes() == CONFIG
    assert d.read_bytes() == b"other"


def test_cut_mid_body_resumes_inside_the_same_call(hub: FakeHub, tmp_path: Path) -> None:
    """http_get catches the truncated body and retries itself with ``Range: bytes=<bytes written>-``.

    It writes whole 10 MiB chunks only, so what arrived after the last full chunk is fetched again.
    """
    hub.add_repo(REPO, {"big.gguf": BIG})
    hub.cut_after(REPO, "big.gguf", 11 * 1024 * 1024)
    res = run_hf(
        hub,
        tmp_path,
        f"from huggingface_hub import hf_hub_download\nout(path=hf_hub_download({REPO!r}, 'big.gguf', local_dir='ld'))",
    )
    assert Path(res["path"]).read_bytes() == BIG
    assert gets(hub, "big.gguf") == [None, f"bytes={CHUNK}-"]
    assert "Trying to resume download" in res["stderr"]
    assert not list((tmp_path / "ld").rglob("*.incomplete"))


def test_cut_before_the_first_chunk_restarts_from_zero(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_after(REPO, "model.gguf", 1000)
    res = run_hf(
        hub, tmp_path, f"from huggingface_hub import hf_hub_download\nout(path=hf_hub_download({REPO!r}, 'model.gguf'))"
    )
    assert Path(res["path"]).read_bytes() == WEIGHTS
    assert gets(hub, "model.gguf") == [None, None]  # nothing was written yet, so the retry asks for everything


def test_cut_with_a_small_chunk_size_resumes_at_the_bytes_written(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_after(REPO, "model.gguf", 100_000, times=2)
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import constants, hf_hub_download
        constants.DOWNLOAD_CHUNK_SIZE = 64 * 1024  # read at call time
        out(path=hf_hub_download({REPO!r}, "model.gguf", local_dir="ld"))
        """,
    )
    assert Path(res["path"]).read_bytes() == WEIGHTS
    assert gets(hub, "model.gguf") == [None, "bytes=65536-", "bytes=131072-"]  # the 2nd cut is 100_000 into the 206


def test_repeated_cuts_without_progress_give_up_and_leave_no_partial_file(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_after(REPO, "model.gguf", 0, times=10)
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import hf_hub_download
        out(error=error_of(lambda: hf_hub_download({REPO!r}, "model.gguf", local_dir="ld")))
        """,
    )
    assert res["error"][0] == "RemoteProtocolError"  # httpx2's, not wrapped by huggingface_hub
    assert gets(hub, "model.gguf") == [None] * 6  # 1 try + 5 retries, 1 s apart
    assert not (tmp_path / "ld" / "model.gguf").exists()
    assert not list((tmp_path / "ld").rglob("*.incomplete"))


def test_not_found_errors(hub: FakeHub, tmp_path: Path) -> None:
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        out(
            repo_info=error_of(lambda: api.model_info("acme/nope")),
            repo_tree=error_of(lambda: api.list_repo_files("acme/nope")),
            repo_dl=error_of(lambda: hf_hub_download("acme/nope", "model.gguf", local_dir="ld")),
            file_dl=error_of(lambda: hf_hub_download({REPO!r}, "nope.gguf", local_dir="ld")),
            file_cache=error_of(lambda: hf_hub_download({REPO!r}, "nope.gguf")),
            rev_info=error_of(lambda: api.model_info({REPO!r}, revision="nope")),
            rev_tree=error_of(lambda: api.list_repo_files({REPO!r}, revision="nope")),
            rev_dl=error_of(lambda: hf_hub_download({REPO!r}, "model.gguf", revision="nope", local_dir="ld")),
        )
        """,
    )
    for key in ("repo_info", "repo_tree", "repo_dl"):
        assert res[key][0] == "RepositoryNotFoundError", key
    for key in ("file_dl", "file_cache"):
        assert res[key][0] == "RemoteEntryNotFoundError" and "EntryNotFoundError" in res[key], key
    for key in ("rev_info", "rev_tree", "rev_dl"):
        assert res[key][0] == "RevisionNotFoundError", key


def test_gated_repo_needs_the_token_for_files(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("acme/gated", {"model.gguf": WEIGHTS}, gated_token=TOKEN)
    code = """
        from huggingface_hub import HfApi, hf_hub_download
        def dl(d, **kw):
            path = hf_hub_download("acme/gated", "model.gguf", local_dir=d, **kw)
            return open(path, "rb").read() == bytes(range(256)) * 1000
        out(
            gated=HfApi().model_info("acme/gated").gated,
            no_token=error_of(lambda: dl("a")),
            wrong=error_of(lambda: dl("b", token="hf_wrong")),
            kwarg=dl("c", token=%r),
            env=dl("d") if os.environ.get("HF_TOKEN") else None,
        )
        """
    res = run_hf(hub, tmp_path, code % TOKEN)
    assert res["gated"] == "manual"  # like the Hub: a gated repo's metadata is public
    assert res["no_token"][:2] == ["GatedRepoError", "RepositoryNotFoundError"]
    assert res["wrong"][:2] == ["GatedRepoError", "RepositoryNotFoundError"]
    assert res["kwarg"] is True and res["env"] is None
    assert run_hf(hub, tmp_path, code % TOKEN, HF_TOKEN=TOKEN)["env"] is True
    resolves = [(m, t, r) for m, t, r in hub.requests if t.startswith("/acme/gated/resolve")]
    assert resolves[:2] == [("HEAD", "/acme/gated/resolve/main/model.gguf", None)] * 2


def test_private_repo_is_not_found_without_the_token(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("acme/private", {"model.gguf": WEIGHTS}, gated_token=TOKEN, private=True)
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import HfApi
        out(anon=error_of(lambda: HfApi().model_info("acme/private")),
            private=HfApi(token={TOKEN!r}).model_info("acme/private").private)
        """,
    )
    assert res["anon"][0] == "RepositoryNotFoundError" and res["private"] is True


def test_tqdm_class_sees_progress_and_an_exception_from_update_aborts_cleanly(hub: FakeHub, tmp_path: Path) -> None:
    res = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import constants, hf_hub_download
        from tqdm.auto import tqdm
        constants.DOWNLOAD_CHUNK_SIZE = 64 * 1024  # progress arrives per chunk (10 MiB by default)
        calls = []
        class Cancelled(Exception):
            pass
        class Watch(tqdm):
            limit = None
            def __init__(self, *args, **kwargs):
                calls.append(["init", sorted(kwargs), kwargs.get("total"), kwargs.get("initial")])
                super().__init__(*args, **{{**kwargs, "disable": True}})
            def update(self, n=1):
                calls.append(["update", n])
                if Watch.limit is not None and sum(c[1] for c in calls if c[0] == "update") > Watch.limit:
                    raise Cancelled()
                return super().update(n)
        Watch.limit = 150_000
        error = error_of(lambda: hf_hub_download({REPO!r}, "model.gguf", local_dir="ld", tqdm_class=Watch))
        left = sorted(str(p.relative_to("ld")) for p in __import__("pathlib").Path("ld").rglob("*") if p.is_file())
        Watch.limit = None
        path = hf_hub_download({REPO!r}, "model.gguf", local_dir="ld", tqdm_class=Watch)
        out(error=error, left=left, calls=calls, ok=open(path, "rb").read() == bytes(range(256)) * 1000)
        """,
    )
    assert res["error"][0] == "Cancelled"
    assert ".cache/huggingface/download/model.gguf.lock" in res["left"]  # and no model.gguf, no *.incomplete:
    assert not [p for p in res["left"] if not p.startswith(".cache/") or p.endswith((".incomplete", ".metadata"))]
    init = ["init", ["desc", "initial", "total", "unit", "unit_scale"], len(WEIGHTS), 0]
    assert res["calls"][:4] == [init, ["update", 65536], ["update", 65536], ["update", 65536]]
    assert res["calls"][4] == init and res["ok"] is True
    assert gets(hub, "model.gguf") == [None, None]  # the second call starts over: nothing was kept to resume


def test_advertised_sha256_is_not_verified_by_the_library(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("acme/liar", [HubFile("model.gguf", WEIGHTS, advertised_sha256="0" * 64)])
    res = run_hf(
        hub,
        tmp_path,
        """
        from huggingface_hub import HfApi, hf_hub_download
        sibling = HfApi().model_info("acme/liar", files_metadata=True).siblings[0]
        out(sha=sibling.lfs.sha256, path=hf_hub_download("acme/liar", "model.gguf", local_dir="ld"))
        """,
    )
    assert res["sha"] == "0" * 64
    assert Path(res["path"]).read_bytes() == WEIGHTS  # downloaded without complaint: verifying is the caller's job


def test_endpoint_is_read_at_import_so_patching_constants_is_not_enough(hub: FakeHub, tmp_path: Path) -> None:
    res = run_hf(
        hub,
        tmp_path,
        f"""
        os.environ.pop("HF_ENDPOINT")  # imported without HF_ENDPOINT
        from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url
        url = {hub.url!r}
        explicit = [hf_hub_url({REPO!r}, "model.gguf", endpoint=url), HfApi(endpoint=url).model_info({REPO!r}).id,
                    hf_hub_download({REPO!r}, "model.gguf", endpoint=url, local_dir="ld")]
        constants.ENDPOINT = url
        patched = [hf_hub_url({REPO!r}, "model.gguf"), HfApi().endpoint]
        out(explicit=explicit, patched=patched)
        """,
    )
    assert res["explicit"] == [f"{hub.url}/{REPO}/resolve/main/model.gguf", REPO, str(tmp_path / "ld" / "model.gguf")]
    # HfApi() picks the patched constant up, hf_hub_url (so hf_hub_download) keeps the import-time URL template.
    assert res["patched"] == [f"https://huggingface.co/{REPO}/resolve/main/model.gguf", hub.url]


# -- the protocol, directly ---------------------------------------------------------------------------------------


def fetch(hub: FakeHub, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(hub.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_resolve_headers_and_ranges(hub: FakeHub) -> None:
    url = f"/{REPO}/resolve/main/model.gguf"
    status, headers, body = fetch(hub, url, "HEAD")
    assert status == 200 and body == b""
    assert headers["ETag"] == headers["X-Linked-Etag"] == f'"{sha256(WEIGHTS)}"'
    assert headers["Content-Length"] == headers["X-Linked-Size"] == str(len(WEIGHTS))
    assert len(headers["X-Repo-Commit"]) == 40 and not any(k.lower().startswith("x-xet") for k in headers)
    status, headers, body = fetch(hub, url, Range="bytes=1000-")
    assert (status, headers["Content-Range"], body) == (
        206,
        f"bytes 1000-{len(WEIGHTS) - 1}/{len(WEIGHTS)}",
        WEIGHTS[1000:],
    )
    assert fetch(hub, url, Range="bytes=10-19")[2] == WEIGHTS[10:20]
    assert fetch(hub, url, Range="bytes=-5")[2] == WEIGHTS[-5:]
    status, headers, _ = fetch(hub, url, Range=f"bytes={len(WEIGHTS)}-")
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(WEIGHTS)}")
    status, headers, _ = fetch(hub, f"/{REPO}/resolve/main/config.json", "HEAD")
    assert "X-Linked-Etag" not in headers and headers["Content-Length"] == str(len(CONFIG))
    status, headers, _ = fetch(hub, f"/{REPO}/resolve/main/nope", "HEAD")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound") and headers["X-Repo-Commit"]
    assert hub.requests[1] == ("GET", url, "bytes=1000-")


def test_slow_throttles_the_body(hub: FakeHub) -> None:
    hub.slow(REPO, "model.gguf", 500_000)
    start = time.monotonic()
    assert fetch(hub, f"/{REPO}/resolve/main/model.gguf")[2] == WEIGHTS
    assert time.monotonic() - start >= 0.4  # 256 kB at 500 kB/s
