"""A failed pull says what failed: the network is named as the network, an rbee bug as a bug (with its
traceback in the log, not its text in the job's events)."""

from __future__ import annotations

import logging

import httpx
import pytest

from rbee.hive import downloads
from rbee.hive.model_refs import ModelRef

REF = ModelRef(text="org/m-GGUF:Q4_K_M", repo="org/m-GGUF", quant="Q4_K_M")


def test_a_connection_failure_says_the_hub_cannot_be_reached() -> None:
    failed = downloads._hub_error(httpx.ConnectError("[Errno 111] Connection refused"), REF, downloads.Hub())
    assert "cannot reach" in str(failed) and "HF_ENDPOINT" in str(failed)
    timed_out = downloads._hub_error(TimeoutError("read timed out"), REF, downloads.Hub())
    assert "cannot reach" in str(timed_out)


def test_a_bug_is_not_blamed_on_the_network_and_its_traceback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    try:
        {}["sha"]  # a bug in rbee, as a KeyError
    except KeyError as exc:
        with caplog.at_level(logging.ERROR, logger="rbee.hive.downloads"):
            failed = downloads._hub_error(exc, REF, downloads.Hub())
    assert "cannot reach" not in str(failed) and "unexpected error (KeyError)" in str(failed)
    assert "'sha'" not in str(failed)  # internals stay in the log
    assert caplog.records and caplog.records[0].exc_info is not None
