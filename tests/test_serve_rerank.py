"""``finbert2 serve --reranker``: TEI's ``/rerank`` against the cross-encoder called directly, its limits and
errors, and ``/search`` with ``"rerank": true`` (hostile bodies: tests/test_serve_schema.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import NEWS, make_reranker, make_retriever
from test_serve_api import assert_tei_error, wait_ready

from finbert2.rerank.modeling import CrossEncoderScorer
from finbert2.serve.app import create_app
from finbert2.serve.args import ServeArguments

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory, tiny_tokenizer_dir):
    return make_reranker(tiny_tokenizer_dir, tmp_path_factory.mktemp("serve-rerank") / "reranker")


@pytest.fixture(scope="module")
def client(reranker_dir, tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("serve-rerank-index")
    retriever = make_retriever(tiny_tokenizer_dir, root / "retriever")
    app = create_app(ServeArguments(retriever=str(retriever), reranker=str(reranker_dir), index=str(root / "index"),
                                    max_client_batch_size=8, max_batch_tokens=300, rerank_top_k=5))
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def scorer(reranker_dir):
    return CrossEncoderScorer.from_pretrained(str(reranker_dir))


def test_rerank_answers_in_tei_shape_with_the_models_scores(client, scorer):
    query = "美联储加息对科技股的影响"
    texts = NEWS + ["美联储" * 40]  # lengths differ: the batcher splits them by the token budget
    logits = scorer.score(query, texts, raw=True)
    body = client.post("/rerank", json={"query": query, "texts": texts}).json()
    assert [item["index"] for item in body] == list(np.argsort(-logits, kind="stable"))
    assert all(set(item) == {"index", "score"} for item in body)
    expected = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose([item["score"] for item in body], expected[[item["index"] for item in body]],
                               atol=1e-5)
    raw = client.post("/rerank", json={"query": query, "texts": texts, "raw_scores": True,
                                       "return_text": True}).json()
    np.testing.assert_allclose([item["score"] for item in raw], logits[[item["index"] for item in raw]], atol=1e-5)
    assert [item["text"] for item in raw] == [texts[item["index"]] for item in raw]


def test_rerank_errors(client):
    assert_tei_error(client.post("/rerank", json={"query": "x", "texts": []}), 400, "empty")
    assert_tei_error(client.post("/rerank", json={"query": "x", "texts": ["ok", " "]}), 400, "empty")
    assert_tei_error(client.post("/rerank", json={"query": "  ", "texts": ["ok"]}), 400, "empty")
    assert_tei_error(client.post("/rerank", json={"query": "", "texts": ["ok"]}), 422, "validation")
    assert_tei_error(client.post("/rerank", json={"query": "x", "texts": ["a"] * 9}), 413, "validation")
    assert_tei_error(client.post("/rerank", json={"query": "x", "texts": "a"}), 422, "validation")
    assert_tei_error(client.post("/rerank", json={"texts": ["a"]}), 422, "validation")
    long_text = "央行货币政策" * 120  # the pair is far beyond 512 tokens
    assert_tei_error(client.post("/rerank", json={"query": "央行", "texts": [NEWS[0], long_text]}), 422, "validation")
    cut = client.post("/rerank", json={"query": "央行", "texts": [NEWS[0], long_text], "truncate": True})
    assert cut.status_code == 200 and cut.headers.get("content-type") == "application/json"


def test_rerank_without_a_reranker_is_404(tiny_tokenizer_dir, tmp_path):
    retriever = make_retriever(tiny_tokenizer_dir, tmp_path / "retriever")
    with TestClient(create_app(ServeArguments(retriever=str(retriever), index=str(tmp_path / "index")))) as test:
        wait_ready(test)
        assert_tei_error(test.post("/rerank", json={"query": "x", "texts": ["a"]}), 404, "not_found")
        assert test.post("/index/documents", json={"documents": [{"id": "a", "text": NEWS[0]}]}).status_code == 200
        assert_tei_error(test.post("/search", json={"query": "央行", "rerank": True}), 404, "not_found")


def test_search_rerank_orders_the_fused_top_k_by_the_reranker(client, scorer):
    docs = [{"id": f"d{i}", "text": text} for i, text in enumerate(NEWS)]
    assert client.post("/index/documents", json={"documents": docs}).status_code == 200
    query = "央行下调准备金率"
    fused = client.post("/search", json={"query": query, "top_k": 5}).json()["hits"]
    reranked = client.post("/search", json={"query": query, "top_k": 3, "rerank": True}).json()["hits"]
    # --rerank_top_k 5: the fused top 5 windows are scored, the best 3 returned
    expected = {hit["id"]: float(scorer.score(query, [hit["text"]])[0]) for hit in fused}
    assert [h["id"] for h in reranked] == sorted(expected, key=lambda d: -expected[d])[:3]
    for hit in reranked:
        assert hit["rerank_score"] == pytest.approx(expected[hit["id"]], abs=1e-5)
    assert all(hit["rerank_score"] is None for hit in fused)
    info = client.get("/info").json()
    assert {"name": "reranker", "kind": "reranker"}.items() <= info["models"][-1].items()
