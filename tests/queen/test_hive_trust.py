"""A hive is a peer of limited trust: each test is a report a hostile hive with a valid token could send."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from rbee.common.daemon import same_address
from rbee.contracts.hives import HiveReport, HostedWorker
from rbee.contracts.models import ModelEntry
from rbee.contracts.status import EngineInfo
from rbee.contracts.workers import WorkerInfo, WorkerState
from rbee.queen.errors import InvalidRequest
from rbee.queen.hive_trust import ReportRefused, check_origin, check_tls, trusted_workers

ENTRY = ModelEntry(name="tiny", path="/m/tiny.gguf", size_bytes=1, added_at=0.0)


def hosted(worker_id: str = "h1-w1", url: str | None = "http://10.0.0.5:4000", **info: object) -> HostedWorker:
    fields: dict[str, object] = {"id": worker_id, "model": "tiny", "hive": "h1", "state": WorkerState.READY,
                                 "url": url, "slots": 2, "context_size": 512, "started_at": 1.0, **info}
    return HostedWorker(info=WorkerInfo.model_validate(fields), api_key="k", entry=ENTRY)


def report(*workers: HostedWorker, **fields: object) -> HiveReport:
    base: dict[str, object] = {"alias": "h1", "version": "0.1.0", "address": "10.0.0.5", "port": 7835,
                               "engine": EngineInfo(path="/e"), "devices": [], "memory_total": 10**9,
                               "models": [ENTRY], "workers": list(workers)}
    return HiveReport.model_validate({**base, **fields})


def test_the_claimed_address_must_be_the_peer_and_the_enrolled_one() -> None:
    check_origin(report(), "10.0.0.5", None)
    check_origin(report(), "::ffff:10.0.0.5", "10.0.0.5")  # one address in two spellings
    with pytest.raises(ReportRefused, match=r"came from 10\.0\.0\.66"):
        check_origin(report(), "10.0.0.66", None)  # a token holder elsewhere diverting traffic to another host
    with pytest.raises(ReportRefused, match=r"issued for 10\.0\.0\.9"):
        check_origin(report(), "10.0.0.5", "10.0.0.9")  # a token used from a machine it was not issued for
    assert not same_address("10.0.0.5", "not an address")


def test_a_hive_may_not_downgrade_to_plain_http_once_there_is_a_ca() -> None:
    check_tls(report(), tls_required=False)
    check_tls(report(tls=True), tls_required=True)
    with pytest.raises(InvalidRequest, match="uses TLS") as refused:
        check_tls(report(), tls_required=True)
    assert refused.value.param == "tls"
    with pytest.raises(InvalidRequest, match="uses TLS"):  # a local port is no safer: another user may hold it
        check_tls(report(address="127.0.0.1"), tls_required=True)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:7833/v1/admin/shutdown?",  # the queen's own admin API, path chosen by the hive
    "http://10.0.0.5:4000/v1/admin/shutdown?",   # its own address, but a path and query of its choosing
    "http://10.0.0.5:4000#",
    "http://own:1@10.0.0.9:4000",                # user info that makes another host the real one
    "http://10.0.0.5@127.0.0.1:4000",
    "https://10.0.0.5:4000",                     # a scheme the hive does not speak
    "http://10.0.0.50:4000",
    "http://10.0.0.5:99999",
    "http://localhost:4000",
])
def test_worker_urls_elsewhere_or_with_a_path_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest, match="not on its own address"):
        trusted_workers(report(hosted(url=url)))


def test_the_queen_builds_each_worker_url_from_the_address_and_port() -> None:
    (worker,) = trusted_workers(report(hosted(url="http://10.0.0.5:4000/")))
    assert worker.info.url == "http://10.0.0.5:4000"
    (v6,) = trusted_workers(report(hosted(url="http://[fe80:0::1]:4000", hive="h1"), address="fe80::1"))
    assert v6.info.url == "http://[fe80::1]:4000"


def test_a_fronted_worker_is_reached_at_its_own_front_on_the_hive_port_only() -> None:
    (worker,) = trusted_workers(report(hosted(url="http://10.0.0.5:7835/v1/workers/h1-w1/engine/")))
    assert worker.info.url == "http://10.0.0.5:7835/v1/workers/h1-w1/engine"
    (tls,) = trusted_workers(report(hosted(url="https://10.0.0.5:7835/v1/workers/h1-w1/engine"), tls=True))
    assert tls.info.url == "https://10.0.0.5:7835/v1/workers/h1-w1/engine"


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:7835/v1/workers/h1-w2/engine",  # another worker's front: its key would reach the wrong engine
    "http://10.0.0.5:4000/v1/workers/h1-w1/engine",  # a port that is not the hive's API
    "http://10.0.0.5:7835/v1/workers/localhost-w1/engine",
    "http://10.0.0.5:7835/v1/workers/..%2f..%2fv1/engine",
])
def test_a_front_url_of_another_worker_or_port_is_refused(url: str) -> None:
    with pytest.raises(InvalidRequest, match=r"a worker it fronts is at http://10\.0\.0\.5:7835/v1/workers/h1-w1/"):
        trusted_workers(report(hosted(url=url)))
    with pytest.raises(InvalidRequest, match="not on its own address"):  # and never another host's
        trusted_workers(report(hosted(url=url.replace("10.0.0.5", "10.0.0.9"))))


def test_a_hive_claims_only_its_own_workers_once_and_only_models_it_holds() -> None:
    with pytest.raises(InvalidRequest, match="only its own workers"):
        trusted_workers(report(hosted(hive="h2")))
    with pytest.raises(InvalidRequest, match="only its own workers"):
        trusted_workers(report(hosted(worker_id="localhost-w1")))  # would shadow the queen's own worker
    with pytest.raises(InvalidRequest, match="twice"):
        trusted_workers(report(hosted(), hosted()))
    with pytest.raises(InvalidRequest, match="not in its catalog"):
        trusted_workers(report(hosted(), models=[]))
    elsewhere = ENTRY.model_copy(update={"path": "/etc/shadow"})
    with pytest.raises(InvalidRequest, match="not in its catalog"):
        trusted_workers(report(hosted().model_copy(update={"entry": elsewhere})))


@pytest.mark.parametrize("worker_id", ["../../v1/admin/shutdown", "h1-w1/../x", "h1-w1?x", "", "h1 w1", "x" * 200])
def test_worker_ids_that_could_climb_a_path_are_refused(worker_id: str) -> None:
    with pytest.raises(ValidationError):
        hosted(worker_id=worker_id)


@pytest.mark.parametrize("change", [
    {"devices": [{"id": "cpu", "name": "CPU", "total_bytes": 1, "utilization": math.nan}]},
    {"devices": [{"id": "cpu", "name": "CPU", "total_bytes": 1, "temperature_c": math.inf}]},
    {"devices": [{"id": "cpu", "name": "CPU", "total_bytes": 10**400}]},
    {"devices": [{"id": "cpu/../x", "name": "CPU", "total_bytes": 1}]},
    {"memory_total": -1},
    {"address": "127.0.0.1:7833/v1"},
    {"address": "queen.example"},
    {"version": "v" * 10_000},
    {"devices": [{"id": f"cpu{i}", "name": "CPU", "total_bytes": 1} for i in range(65)]},
])
def test_reports_out_of_bounds_are_refused_before_use(change: dict[str, object]) -> None:
    raw = json.loads(report().model_dump_json())
    with pytest.raises(ValidationError):
        HiveReport.model_validate_json(json.dumps({**raw, **change}))


def test_many_workers_are_refused_and_long_error_text_is_cut() -> None:
    raw = json.loads(report().model_dump_json())
    many = [json.loads(hosted(worker_id=f"h1-w{i}").model_dump_json()) for i in range(257)]
    with pytest.raises(ValidationError, match="at most 256"):
        HiveReport.model_validate({**raw, "workers": many})
    noisy = hosted(error="x" * 100_000)
    assert noisy.info.error is not None and len(noisy.info.error) <= 4096
