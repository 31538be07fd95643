"""One place maps hive failures (rbee/queen/hive_errors.py): a remote hive's HTTP failures to the errors the
embedded hive raises, and those to the queen's API errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx
import pytest

from rbee.common.jobs import JobFailed
from rbee.hive.model_store import ModelInUse, ModelUnavailable
from rbee.hive.worker import WorkerStartError
from rbee.queen import hive_errors
from rbee.queen.errors import QueenError
from rbee.queen.hive_client import HiveCallFailed, HiveClient


def _raises(exc: HiveCallFailed, failing: type[Exception], what: str = "",
            by_status: Mapping[int, Callable[[str], Exception]] | None = None) -> Exception:
    with pytest.raises(Exception) as caught, hive_errors.from_remote("h1", "0.0.9", failing, what, by_status):
        raise exc
    assert caught.value.__cause__ is exc
    return caught.value


@pytest.mark.parametrize("failing", [ModelUnavailable, JobFailed, WorkerStartError, HiveCallFailed])
def test_a_route_the_hive_lacks_is_an_upgrade_hint_as_the_calls_own_error(failing: type[Exception]) -> None:
    raised = _raises(HiveCallFailed("HTTP 404", 404), failing)
    assert type(raised) is failing
    assert str(raised) == "hive 'h1' runs rbee 0.0.9, which cannot do this for its queen; " \
                          "`rbee hive upgrade h1` brings it up to date"


@pytest.mark.parametrize(("status", "expected"), [(404, ModelUnavailable), (409, ModelInUse), (503, HiveCallFailed)])
def test_the_hives_statuses_are_the_embedded_hives_errors(status: int, expected: type[Exception]) -> None:
    raised = _raises(HiveCallFailed("said the hive", status), HiveCallFailed, by_status=hive_errors.BY_STATUS)
    assert type(raised) is expected and str(raised) == "said the hive"


def test_any_other_failure_is_the_calls_error_after_what_was_asked() -> None:
    raised = _raises(HiveCallFailed("hive 'h1' at http://x did not answer (ConnectError)"), JobFailed,
                     "hive 'h1' did not start the pull")
    assert type(raised) is JobFailed
    assert str(raised) == "hive 'h1' did not start the pull: hive 'h1' at http://x did not answer (ConnectError)"


def test_errors_that_are_not_the_hives_pass_through() -> None:
    with pytest.raises(KeyError), hive_errors.from_remote("h1", "1", JobFailed):
        raise KeyError("a bug")
    with pytest.raises(KeyError), hive_errors.to_queen("x"):
        raise KeyError("a bug")


@pytest.mark.parametrize(("exc", "status", "code"), [
    (ModelUnavailable("not here"), 404, "model_not_found"),
    (ModelInUse("busy"), 409, "conflict"),
    (JobFailed("no room"), 503, "worker_unavailable"),
    (WorkerStartError("llama-server exited"), 503, "worker_unavailable"),
    (HiveCallFailed("did not answer"), 502, "upstream_error"),
])
def test_each_hive_error_is_one_queen_error(exc: hive_errors.HiveError, status: int, code: str) -> None:
    with pytest.raises(QueenError) as caught, hive_errors.to_queen("loading 'm' on hive 'h1'"):
        raise exc
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.message == f"loading 'm' on hive 'h1': {exc}" and caught.value.__cause__ is exc
    assert hive_errors.queen_error(exc).message == str(exc)


async def test_a_remote_call_that_fails_says_what_the_hive_said_or_that_it_did_not_answer() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/json":
            return httpx.Response(409, json={"error": {"message": "'m' is answering requests"}})
        return httpx.Response(404, text="Not Found")

    client = HiveClient("h1", lambda: "http://10.0.0.5:7835", "t", None)
    client.http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    with pytest.raises(HiveCallFailed) as said:
        await client.call("GET", "/json")
    assert (str(said.value), said.value.status, said.value.no_route) == ("'m' is answering requests", 409, False)
    with pytest.raises(HiveCallFailed) as lacks:
        await client.call("GET", "/old")
    assert lacks.value.no_route
    await client.close()
    away = HiveClient("h1", lambda: "http://127.0.0.1:1", "t", None)  # nothing listens there
    with pytest.raises(HiveCallFailed, match=r"hive 'h1' at http://127.0.0.1:1 did not answer \(ConnectError\)"):
        await away.call("GET", "/v1/hive/report")
    await away.close()
