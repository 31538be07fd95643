"""The pure parts of the hive's front (rbee/hive/front.py): which engine paths pass, and which credentials.
The front itself runs for real in tests/e2e/test_speech_fleet.py."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import cast

import pytest

from rbee.hive.front import ROUTE, authorised, engine_path, hive_url
from rbee.hive.worker import WorkerProcess


@pytest.mark.parametrize("raw", ["/", "/inference", "/v1/images/generations", "/sdapi/v1/txt2img", "/a.b_c-d~e"])
def test_plain_paths_pass_unchanged(raw: str) -> None:
    assert engine_path(raw) == raw


@pytest.mark.parametrize("raw", ["", "inference", "/..", "/../hive/report", "/a/../b", "/.", "/./inference", "//x",
                                 "/a//b", "/inference/", "/%2e%2e", "/%2E%2E/x", "/in%66erence", "/http://evil:1/",
                                 "/a?b", "/a#b", "/a\\b", "/a b", "/a\x00", "/ü"])
def test_paths_that_could_escape_or_hide_something_are_refused(raw: str) -> None:
    assert engine_path(raw) is None


def test_the_workers_key_or_the_join_token_and_nothing_else() -> None:
    worker = cast(WorkerProcess, SimpleNamespace(api_key="worker-key"))
    assert authorised({"authorization": "Bearer worker-key"}, worker, "join-token")
    assert authorised({"authorization": "Bearer join-token"}, worker, "join-token")
    assert authorised({"authorization": "Bearer join-token"}, None, "join-token")
    for given in ("", "worker-key", "Bearer other-key", "Bearer worker-key ", "Basic worker-key"):
        assert not authorised({"authorization": given}, worker, "join-token")
    assert not authorised({}, worker, "join-token")
    assert not authorised({"authorization": "Bearer worker-key"}, None, "join-token")


def test_the_route_and_the_hive_url() -> None:
    assert re.fullmatch(ROUTE, "/v1/workers/h1-w2/engine/inference") and re.fullmatch(ROUTE, "/v1/workers/x/engine")
    assert not re.fullmatch(ROUTE, "/v1/workers/h1-w2/other") and not re.fullmatch(ROUTE, "/v1/hive/report")
    assert hive_url("10.0.0.5", 7835, True) == "https://10.0.0.5:7835"
    assert hive_url("fe80::1", 7835, False) == "http://[fe80::1]:7835"
