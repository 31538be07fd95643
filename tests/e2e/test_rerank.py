"""Rerank on a real queen: a `--reranking` worker of a reranker GGUF (the tiny model with rank pooling)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen

QUERY = {"query": "what is a cat", "documents": ["a cat is an animal", "the stock market fell", "cats purr"]}


@pytest.fixture(scope="module")
def reranker(queen: Queen, tiny_rerank_model: Path) -> dict[str, object]:
    """The reranker's first answer, by path (which adds it to the catalog and loads a worker)."""
    resp = httpx.post(f"{queen.url}/v1/rerank", json={"model": str(tiny_rerank_model), **QUERY}, timeout=60)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_rerank_scores_every_document_best_first(queen: Queen, reranker: dict[str, object]) -> None:
    results = reranker["results"]
    assert isinstance(results, list) and sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3
    workers = [w for w in queen.workers() if w["model"] == "tiny-rerank"]
    assert [w["mode"] for w in workers] == ["rerank"]


def test_the_catalog_knows_a_reranker(queen: Queen, reranker: dict[str, object]) -> None:
    entries = {e["name"]: e for e in httpx.get(f"{queen.url}/v1/catalog", timeout=10).json()}
    assert entries["tiny-rerank"]["pooling"] == "rank"


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_other_spellings_answer_the_same(queen: Queen, reranker: dict[str, object], path: str) -> None:
    resp = httpx.post(f"{queen.url}{path}", json={"model": "tiny-rerank", **QUERY}, timeout=60)
    assert resp.status_code == 200 and resp.json()["results"] == reranker["results"]
    assert resp.headers["x-rbee-worker"]


def test_top_n(queen: Queen, reranker: dict[str, object]) -> None:
    resp = httpx.post(f"{queen.url}/v1/rerank", json={"model": "tiny-rerank", **QUERY, "top_n": 1}, timeout=60)
    assert resp.status_code == 200 and resp.json()["results"] == reranker["results"][:1]  # type: ignore[index]


def test_a_model_that_is_not_a_reranker_is_400(queen: Queen, tiny_model: Path) -> None:
    resp = httpx.post(f"{queen.url}/v1/rerank", json={"model": str(tiny_model), **QUERY}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "model_not_reranker" and "pooling 'mean'" in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny-rerank", "query": "q", "documents": []}, "documents"),
    ({"model": "tiny-rerank", "documents": ["a"]}, "query"),
    ({"model": "tiny-rerank", "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
])
def test_a_bad_body_is_400_naming_the_field(queen: Queen, body: dict[str, object], param: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/rerank", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


def test_an_unknown_model_is_404(queen: Queen) -> None:
    resp = httpx.post(f"{queen.url}/v1/rerank", json={"model": "no-such-reranker", **QUERY}, timeout=60)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_a_top_n_past_the_engine_s_int_is_400_not_its_500(queen: Queen, reranker: dict[str, object]) -> None:
    # found by the fuzzer: llama-server answers top_n >= 2**31 with a 500 (vector::_M_default_append)
    resp = httpx.post(f"{queen.url}/v1/rerank", json={"model": "tiny-rerank", **QUERY, "top_n": 2**31}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "top_n", resp.text
    largest = httpx.post(f"{queen.url}/v1/rerank", json={"model": "tiny-rerank", **QUERY, "top_n": 2**31 - 1},
                         timeout=60)
    assert largest.status_code == 200 and largest.json()["results"] == reranker["results"]
