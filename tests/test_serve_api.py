"""``finbert2 serve`` in process: every route's answers against the models called directly, every limit's
status code and error shape, the index's windows, replacement, deletion and reload."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import NEWS, REPO_ROOT, make_classifier, make_retriever

from finbert2.serve.app import create_app
from finbert2.serve.args import ServeArguments

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

E5_PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("serve-models")
    return {
        "retriever": make_retriever(tiny_tokenizer_dir, root / "retriever"),
        "e5_style": make_retriever(tiny_tokenizer_dir, root / "e5_style", prompts=E5_PROMPTS),
        "sentiment": make_classifier(tiny_tokenizer_dir, root / "sentiment", ["消极", "中性", "积极"]),
        "events": make_classifier(tiny_tokenizer_dir, root / "events", ["并购", "分红", "监管", "业绩"],
                                  multi_label=True, threshold=0.45,
                                  long_text={"max_length": 32, "truncation": "chunk", "chunk_overlap": 8}),
    }


def wait_ready(client: TestClient, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200:
        info = client.get("/info", headers=headers).json()
        assert time.monotonic() < deadline and not info["load_error"], info
        time.sleep(0.05)


def serve(**kwargs) -> TestClient:
    return TestClient(create_app(ServeArguments(**kwargs)))


@pytest.fixture(scope="module")
def client(model_dirs, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("serve-index") / "index"
    with serve(retriever=str(model_dirs["retriever"]), index=str(index_dir),
               classifier=[str(model_dirs["sentiment"]), str(model_dirs["events"])],
               max_client_batch_size=8, max_body_bytes=20_000, window_chars=40, window_stride=30) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def direct(model_dirs):
    from finbert2.classify.inference import SequenceClassifier
    from finbert2.retrieve.encoder import DenseEncoder

    return {"retriever": DenseEncoder.from_pretrained(str(model_dirs["retriever"]), device="cpu"),
            "e5_style": DenseEncoder.from_pretrained(str(model_dirs["e5_style"]), device="cpu"),
            "sentiment": SequenceClassifier.from_pretrained(str(model_dirs["sentiment"]), device="cpu"),
            "events": SequenceClassifier.from_pretrained(str(model_dirs["events"]), device="cpu")}


def assert_tei_error(response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type and body["error"], body


def assert_openai_error(response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error


# --- embeddings ------------------------------------------------------------------------------------------

def test_embed_equals_the_encoder_called_directly(client, direct):
    response = client.post("/embed", json={"inputs": NEWS})
    assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "0"
    served = np.array(response.json(), dtype=np.float32)
    np.testing.assert_allclose(served, direct["retriever"].encode(NEWS), atol=1e-5)
    assert np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)
    one = client.post("/embed", json={"inputs": NEWS[0], "prompt_name": "query"}).json()
    np.testing.assert_allclose(one, direct["retriever"].encode_queries(NEWS[:1]), atol=1e-5)
    raw = np.array(client.post("/embed", json={"inputs": NEWS[:2], "normalize": False}).json())
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), served[:2], atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-3)


def test_prompts_saved_with_the_model_are_used(model_dirs, direct):
    with serve(retriever=str(model_dirs["e5_style"])) as test_client:
        wait_ready(test_client)
        for name, method in (("query", "encode_queries"), ("passage", "encode_passages")):
            served = test_client.post("/embed", json={"inputs": NEWS[:3], "prompt_name": name}).json()
            np.testing.assert_allclose(served, getattr(direct["e5_style"], method)(NEWS[:3]), atol=1e-5)
        info = test_client.get("/info").json()["models"][0]
        assert info["prompts"] == {"query": "query: ", "passage": "passage: "} and info["pooling"] == "mean"
        assert_tei_error(test_client.post("/embed", json={"inputs": "x", "prompt_name": "title"}), 422, "validation")


def test_openai_embeddings_float_base64_dimensions_and_usage(client, direct):
    expected = direct["retriever"].encode(NEWS[:3])
    body = client.post("/v1/embeddings", json={"input": NEWS[:3], "model": "retriever"}).json()
    assert body["object"] == "list" and body["model"] == "retriever"
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=1e-5)
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    tokens = sum(len(ids) for ids in direct["retriever"].tokenizer(NEWS[:3])["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    packed = client.post("/v1/embeddings", json={"input": NEWS[0], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected[0], atol=1e-6)
    short = client.post("/v1/embeddings", json={"input": NEWS[0], "dimensions": 16}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(short, expected[0][:16] / np.linalg.norm(expected[0][:16]), atol=1e-5)
    assert_openai_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 65}), 422)
    # one embedding model is served: any name is it (as TEI), a classifier's name is a mistake
    hard_coded = client.post("/v1/embeddings", json={"input": NEWS[0], "model": "text-embedding-3-small"}).json()
    np.testing.assert_allclose(hard_coded["data"][0]["embedding"], expected[0], atol=1e-5)
    assert hard_coded["model"] == "retriever"
    not_embedder = client.post("/v1/embeddings", json={"input": "x", "model": "sentiment"})
    assert_openai_error(not_embedder, 404)
    assert "classifier" in not_embedder.json()["error"]["message"] and "'retriever'" in not_embedder.json()["error"]["message"]
    assert_openai_error(client.post("/v1/embeddings", json={"input": []}), 400)
    assert_openai_error(client.post("/v1/embeddings", json={"inputs": "x"}), 422)


# --- limits ----------------------------------------------------------------------------------------------

def test_limits_answer_with_their_status_codes(client, direct):
    assert_tei_error(client.post("/embed", content=b'{"inputs": "' + b"x" * 25_000 + b'"}',
                                 headers={"content-type": "application/json"}), 413, "payload_too_large")
    chunked = client.post("/embed", content=iter([b'{"inputs": "', b"y" * 25_000, b'"}']),
                          headers={"content-type": "application/json"})
    assert_tei_error(chunked, 413, "payload_too_large")
    assert_tei_error(client.post("/embed", json={"inputs": ["a"] * 9}), 413, "validation")
    assert_tei_error(client.post("/embed", json={"inputs": []}), 400, "empty")
    assert_tei_error(client.post("/embed", json={"inputs": ["ok", "  "]}), 400, "empty")
    assert_tei_error(client.post("/embed", json={"inputs": 7}), 422, "validation")
    assert_tei_error(client.post("/embed", content=b"{not json", headers={"content-type": "application/json"}),
                     422, "validation")
    lone_surrogate = b'{"inputs": "\\ud800"}'  # valid JSON, not valid text
    assert_tei_error(client.post("/embed", content=lone_surrogate, headers={"content-type": "application/json"}),
                     422, "validation")
    assert_tei_error(client.get("/nowhere"), 404, "not_found")


def test_too_long_inputs_422_unless_truncated(client, direct):
    long_text = "央行货币政策" * 120  # far beyond 512 tokens
    assert_tei_error(client.post("/embed", json={"inputs": [NEWS[0], long_text]}), 422, "validation")
    response = client.post("/embed", json={"inputs": [NEWS[0], long_text], "truncate": True})
    assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "1"
    np.testing.assert_allclose(response.json(), direct["retriever"].encode([NEWS[0], long_text]), atol=1e-5)
    assert_openai_error(client.post("/v1/embeddings", json={"input": long_text}), 422)
    assert client.post("/v1/embeddings", json={"input": long_text, "truncate": True}).status_code == 200


def test_api_key_401_without_it(model_dirs):
    with serve(retriever=str(model_dirs["retriever"]), api_key="s3cret") as test_client:
        wait_ready(test_client, {"Authorization": "Bearer s3cret"})
        assert test_client.get("/health").status_code == 200
        assert_tei_error(test_client.post("/embed", json={"inputs": "x"}), 401, "unauthorized")
        assert_tei_error(test_client.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cre"}),
                         401, "unauthorized")
        assert_openai_error(test_client.post("/v1/embeddings", json={"input": "x"}), 401)
        assert_tei_error(test_client.get("/info"), 401, "unauthorized")
        ok = test_client.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("FINBERT2_API_KEY", "from-env")
    assert ServeArguments(retriever="r").api_key == "from-env"


def test_not_ready_is_503_and_health_stays_up(model_dirs):
    app = create_app(ServeArguments(retriever=str(model_dirs["retriever"])))
    test_client = TestClient(app)  # no lifespan: the models never load
    assert test_client.get("/health").json() == {"status": "ok"}
    assert_tei_error(test_client.get("/ready"), 503, "unhealthy")
    assert_tei_error(test_client.post("/embed", json={"inputs": "x"}), 503, "unhealthy")
    assert_openai_error(test_client.post("/v1/embeddings", json={"input": "x"}), 503)


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    with serve(retriever=str(tmp_path / "missing")) as test_client:
        deadline = time.monotonic() + 30
        while not test_client.get("/info").json()["load_error"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = test_client.get("/ready")
        assert_tei_error(response, 503, "unhealthy")
        assert "cannot load" in response.json()["error"]
        assert_tei_error(test_client.get("/health"), 503, "unhealthy")  # liveness fails: restart it


# --- classification --------------------------------------------------------------------------------------

def test_classify_equals_the_classifier_called_directly(client, direct):
    expected = direct["sentiment"].predict(NEWS)
    answers = client.post("/classify", json={"inputs": NEWS}).json()
    assert len(answers) == len(NEWS)
    for answer, probs, label in zip(answers, expected.probabilities, expected.labels()):
        scores = {item["label"]: item["score"] for item in answer}
        np.testing.assert_allclose([scores[n] for n in expected.label_names], probs, atol=1e-5)
        assert [item["label"] for item in answer if item["predicted"]] == [label]
        assert [item["score"] for item in answer] == sorted(scores.values(), reverse=True)
    single = client.post("/classify", json={"inputs": NEWS[0], "raw_scores": True}).json()
    logits = {item["label"]: item["score"] for item in single}
    np.testing.assert_allclose([logits[n] for n in expected.label_names], expected.logits[0], atol=1e-5)


def test_multilabel_uses_the_saved_threshold_and_long_text_strategy(client, direct):
    texts = NEWS + ["公司公告：" + "并购重组进展顺利，" * 12]  # the last needs several 32-token windows
    assert_tei_error(client.post("/classify", json={"inputs": texts, "model": "events"}), 422, "validation")
    response = client.post("/classify", json={"inputs": texts, "model": "events", "truncate": True})
    assert response.status_code == 200 and int(response.headers["x-truncated-inputs"]) >= 1
    expected = direct["events"].predict(texts)
    assert direct["events"].threshold == 0.45
    for answer, probs, labels in zip(response.json(), expected.probabilities, expected.labels()):
        scores = {item["label"]: item["score"] for item in answer}
        np.testing.assert_allclose([scores[n] for n in expected.label_names], probs, atol=1e-5)
        assert sorted(item["label"] for item in answer if item["predicted"]) == sorted(labels)
        assert all(item["predicted"] == (item["score"] >= 0.45) for item in answer)
    assert_tei_error(client.post("/classify", json={"inputs": "x", "model": "nope"}), 404, "not_found")


# --- index and search ------------------------------------------------------------------------------------

DOCS = [
    {"id": "rrr", "title": "降准", "text": "央行宣布下调存款准备金率0.5个百分点，释放长期资金约一万亿元。", "source": "新华社"},
    {"id": "moutai", "title": "茅台年报", "text": "贵州茅台发布年报，净利润同比增长百分之十九，拟每股派发现金红利。",
     "source": "公司公告"},
    {"id": "fed", "title": "美联储", "text": "美联储加息二十五个基点，科技股普遍下跌。" + "市场情绪谨慎，" * 10 + "纳斯达克收跌。",
     "source": "路透"},
    {"id": "pv", "title": "光伏", "text": "光伏行业产能过剩，多家企业下调组件报价，行业利润承压。", "source": "公司公告"},
]


@pytest.fixture(scope="module")
def indexed(client):
    response = client.post("/index/documents", json={"documents": DOCS})
    assert response.status_code == 200, response.text
    return response.json()


def test_documents_are_split_into_windows_and_searchable(client, direct, indexed):
    assert indexed["added"] == 4 and indexed["documents"] == 4 and indexed["windows"] > 4  # "fed" has windows
    for mode in ("dense", "bm25", "hybrid"):
        body = client.post("/search", json={"query": "美联储加息", "mode": mode, "top_k": 4}).json()
        assert body["mode"] == mode and body["hits"], body
        assert len({h["id"] for h in body["hits"]}) == len(body["hits"])  # a document once, as its best window
    bm25 = client.post("/search", json={"query": "茅台年报", "mode": "bm25"}).json()
    assert bm25["hits"][0]["id"] == "moutai" and bm25["hits"][0]["fields"] == {"id": "moutai", "title": "茅台年报",
                                                                               "source": "公司公告"}
    assert "茅台" in bm25["terms"]


def test_dense_scores_are_the_best_window_cosine(client, direct, indexed):
    from finbert2.retrieve.search import format_document
    from finbert2.serve.store import split_windows

    query = "科技股下跌"
    q = direct["retriever"].encode_queries([query])[0]
    expected = {}
    for doc in DOCS:
        windows = split_windows(format_document(doc), 40, 30)
        expected[doc["id"]] = float(np.max(direct["retriever"].encode_passages(windows) @ q))
    hits = client.post("/search", json={"query": query, "mode": "dense", "top_k": 10}).json()["hits"]
    assert [h["id"] for h in hits] == sorted(expected, key=lambda d: -expected[d])
    for hit in hits:
        assert hit["score"] == pytest.approx(expected[hit["id"]], abs=1e-5) and hit["dense_rank"] is not None


def test_hybrid_is_reciprocal_rank_fusion_of_dense_and_bm25(client, indexed):
    query = "美联储加息科技股"
    dense = [h["id"] for h in client.post("/search", json={"query": query, "mode": "dense"}).json()["hits"]]
    bm25 = [h["id"] for h in client.post("/search", json={"query": query, "mode": "bm25"}).json()["hits"]]
    hybrid = client.post("/search", json={"query": query, "mode": "hybrid"}).json()["hits"]
    for hit in hybrid:
        expected = sum(1 / (60 + ranking.index(hit["id"]) + 1) for ranking in (dense, bm25) if hit["id"] in ranking)
        assert hit["score"] == pytest.approx(expected)
        assert hit["dense_rank"] == (dense.index(hit["id"]) + 1 if hit["id"] in dense else None)
        assert hit["bm25_rank"] == (bm25.index(hit["id"]) + 1 if hit["id"] in bm25 else None)
    assert [h["score"] for h in hybrid] == sorted((h["score"] for h in hybrid), reverse=True)


def test_filter_on_stored_fields(client, indexed):
    hits = client.post("/search", json={"query": "利润", "mode": "dense", "filter": {"source": "公司公告"}}).json()["hits"]
    assert {h["id"] for h in hits} == {"moutai", "pv"}
    hits = client.post("/search", json={"query": "利润", "mode": "hybrid",
                                        "filter": {"source": ["路透", "新华社"]}}).json()["hits"]
    assert {h["id"] for h in hits} <= {"fed", "rrr"} and hits
    assert client.post("/search", json={"query": "利润", "filter": {"source": "无"}}).json()["hits"] == []


def test_search_limits(client, indexed):
    assert_tei_error(client.post("/search", json={"query": ""}), 400, "empty")  # as blank text, everywhere
    assert_tei_error(client.post("/search", json={"query": "  "}), 400, "empty")
    assert_tei_error(client.post("/search", json={"query": "x", "top_k": 0}), 422, "validation")
    assert_tei_error(client.post("/search", json={"query": "x", "mode": "sparse"}), 422, "validation")
    assert client.post("/search", json={"query": "!!!", "mode": "bm25"}).json()["hits"] == []


def test_replace_delete_and_reload(client, model_dirs, indexed, tmp_path):
    replaced = client.post("/index/documents", json={"documents": [
        {"id": "pv", "text": "光伏龙头宣布扩产，硅料价格回落。", "source": "研报"}]}).json()
    assert replaced["replaced"] == 1 and replaced["added"] == 0 and replaced["documents"] == 4
    hit = client.post("/search", json={"query": "硅料价格", "mode": "bm25"}).json()["hits"][0]
    assert hit["id"] == "pv" and hit["fields"]["source"] == "研报" and "硅料" in hit["text"]
    deleted = client.request("DELETE", "/index/documents", json={"ids": ["rrr", "absent"]}).json()
    assert deleted["deleted"] == 1 and deleted["missing"] == ["absent"] and deleted["documents"] == 3
    assert "rrr" not in {h["id"] for h in client.post("/search", json={"query": "准备金率", "top_k": 10}).json()["hits"]}
    before = client.post("/search", json={"query": "科技股", "top_k": 10}).json()["hits"]
    index_dir = client.get("/info").json()["index"]["path"]
    with serve(retriever=str(model_dirs["retriever"]), index=index_dir, window_chars=40,
               window_stride=30) as reloaded:
        wait_ready(reloaded)
        assert reloaded.get("/info").json()["index"]["documents"] == 3
        assert reloaded.post("/search", json={"query": "科技股", "top_k": 10}).json()["hits"] == before


def test_serves_an_index_built_by_retrieve_index(model_dirs, tmp_path, direct):
    from finbert2.cli import main as cli_main

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS), encoding="utf-8")
    out = tmp_path / "built"
    assert cli_main(["retrieve", "index", "--model_name_or_path", str(model_dirs["retriever"]),
                     "--corpus", str(corpus), "--output_dir", str(out)]) == 0
    with serve(retriever=str(model_dirs["retriever"]), index=str(out)) as test_client:
        wait_ready(test_client)
        hits = test_client.post("/search", json={"query": "茅台", "mode": "dense", "top_k": 4}).json()["hits"]
        from finbert2.retrieve.index import SearchIndex

        expected = SearchIndex(out).search(["茅台"], 4)[0]
        assert [h["id"] for h in hits] == [h["id"] for h in expected]
        added = test_client.post("/index/documents", json={"documents": [{"id": "new", "text": "新股发行提速"}]}).json()
        assert added["documents"] == 5
    assert [h["id"] for h in SearchIndex(out).search(["新股发行"], 5)[0]].count("new") == 1  # still readable


# --- operations ------------------------------------------------------------------------------------------

def test_info_metrics_and_page(client, indexed):
    info = client.get("/info").json()
    kinds = {m["name"]: m for m in info["models"]}
    assert kinds["retriever"]["dimension"] == 64 and kinds["retriever"]["max_length"] == 512
    assert kinds["events"]["multi_label"] and kinds["events"]["threshold"] == 0.45
    assert info["limits"]["max_client_batch_size"] == 8 and info["index"]["documents"] >= 3
    # this test's own requests (the registry is per process, and test order and workers vary)
    assert client.post("/embed", json={"inputs": ["茅台"]}).status_code == 200
    client.post("/embed", json={"inputs": []})
    text = client.get("/metrics").text
    for name in ('finbert2_requests_total{route="/embed",status="200"}',
                 'finbert2_request_failures_total{error_type="empty",route="/embed"}',
                 'finbert2_stage_duration_seconds_bucket{le="+Inf",model="retriever",stage="queue"}',
                 'finbert2_stage_duration_seconds_bucket{le="+Inf",model="retriever",stage="tokenize"}',
                 'finbert2_stage_duration_seconds_bucket{le="+Inf",model="retriever",stage="inference"}',
                 "finbert2_batch_size_bucket", "finbert2_batch_tokens_bucket", "finbert2_queue_depth",
                 "finbert2_index_documents"):
        assert name in text, name
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "http" not in page.text.split("<script>")[0].lower()


def test_hybrid_evaluation_row_uses_the_same_fusion(tmp_path, model_dirs):
    from finbert2.cli import main as cli_main
    from finbert2.retrieve.search import fuse_runs

    out = tmp_path / "eval"
    assert cli_main(["retrieve", "evaluate", "--eval_data", str(REPO_ROOT / "data" / "demo" / "retrieval" / "eval"), "--models", "bm25",
                     str(model_dirs["retriever"]), "--hybrid", "True", "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert "retriever+bm25_ndcg_at_10" in metrics and "retriever+bm25" in (out / "results.md").read_text("utf-8")
    fused = fuse_runs([{"q": {"a": 3.0, "b": 2.0}}, {"q": {"b": 9.0, "c": 1.0}}], k=60)["q"]
    assert list(fused) == ["b", "a", "c"] and fused["b"] == pytest.approx(1 / 62 + 1 / 61)


def test_workers_sharing_one_index_folder_see_each_others_writes(model_dirs, tmp_path):
    folder = str(tmp_path / "shared-index")
    with serve(retriever=str(model_dirs["retriever"]), index=folder) as first, \
            serve(retriever=str(model_dirs["retriever"]), index=folder) as second:
        wait_ready(first)
        wait_ready(second)
        assert first.post("/index/documents", json={"documents": DOCS[:2]}).json()["documents"] == 2
        seen = second.post("/search", json={"query": "茅台年报", "mode": "bm25"}).json()["hits"]
        assert seen and seen[0]["id"] == "moutai"  # the second worker reloaded the first one's generation
        assert second.post("/index/documents", json={"documents": DOCS[2:]}).json()["documents"] == 4
        assert second.request("DELETE", "/index/documents", json={"ids": ["rrr"]}).json()["documents"] == 3
        ids = {h["id"] for h in first.post("/search", json={"query": "利润", "top_k": 10}).json()["hits"]}
        assert ids == {"moutai", "fed", "pv"}
        assert first.get("/info").json()["index"]["documents"] == 3
