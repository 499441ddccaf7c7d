"""What operations watch on ``/metrics``: per-route latency, queue, batch fill, truncations, refusals, and
input drift (input lengths, unknown/byte-fallback tokens, the running mean embedding against the
index's mean), each checked against values computed here from the same tokenizer and model."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serve_support import NEWS, make_classifier, make_retriever

from finbert2.retrieve.encoder import token_budget_batches
from finbert2.serve.app import create_app
from finbert2.serve.args import ServeArguments
from finbert2.serve.metrics import EmbeddingDrift, UnknownTokens

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# A language the demo tokenizer (trained on Chinese financial news) has no pieces for.
KOREAN = ["중앙은행이 기준금리를 동결했다", "삼성전자 주가가 크게 올랐다",
          "정부는 새로운 부동산 대책을 발표했다", "코스피 지수가 하락 마감했다",
          "환율이 급등하면서 수입 물가가 올랐다", "은행 대출 금리가 인상되었다"]
MAX_BATCH_TOKENS = 64
MIN_BATCH_FILL = 0.5  # the default: an input fills at least half its forward pass's width


def samples(client: TestClient) -> dict[tuple, float]:
    """``{(sample name, sorted labels): value}`` of the server's /metrics."""
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(before: dict, after: dict, name: str, **labels) -> float:
    """How far one sample moved between two scrapes (absent: 0)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("serve-monitoring")
    return {"retriever": make_retriever(tiny_tokenizer_dir, root / "retriever"),
            "sentiment": make_classifier(tiny_tokenizer_dir, root / "sentiment", ["消极", "积极"])}


@contextmanager
def serving(**kwargs):
    with TestClient(create_app(ServeArguments(**kwargs))) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/info").json()
            time.sleep(0.05)
        yield test_client


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    with serving(retriever=str(models["retriever"]), classifier=[str(models["sentiment"])],
                 max_client_batch_size=8, max_batch_tokens=MAX_BATCH_TOKENS, min_batch_fill=MIN_BATCH_FILL,
                 max_concurrent_requests=7) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def encoder(models):
    from finbert2.retrieve.encoder import DenseEncoder

    return DenseEncoder.from_pretrained(str(models["retriever"]), device="cpu")


def test_request_queue_batch_truncation_and_refusal_metrics_move(client, encoder):
    tokenizer = encoder.tokenizer
    lengths = [len(ids) for ids in tokenizer(NEWS)["input_ids"]]
    before = samples(client)
    assert before[("finbert2_max_concurrent_requests", ())] == 7
    assert client.post("/embed", json={"inputs": NEWS}).status_code == 200
    after = samples(client)

    assert value(before, after, "finbert2_request_duration_seconds_count", route="/embed") == 1
    assert value(before, after, "finbert2_stage_duration_seconds_count", model="retriever", stage="queue") == 1
    assert after[("finbert2_queue_depth", (("model", "retriever"),))] == 0
    # One request alone in the batcher: its batches are the token-budget cut of its own lengths.
    batches = token_budget_batches(lengths, MAX_BATCH_TOKENS, min_fill=MIN_BATCH_FILL)
    assert len(batches) > 1
    assert value(before, after, "finbert2_batch_fill_ratio_count", model="retriever") == len(batches)
    fill = sum(len(b) * max(lengths[i] for i in b) for b in batches) / MAX_BATCH_TOKENS
    assert value(before, after, "finbert2_batch_fill_ratio_sum", model="retriever") == pytest.approx(fill)
    assert value(before, after, "finbert2_input_tokens_count", model="retriever") == len(NEWS)
    assert value(before, after, "finbert2_input_tokens_sum", model="retriever") == sum(lengths)
    assert value(before, after, "finbert2_content_tokens_total", model="retriever") == sum(lengths) - 2 * len(NEWS)

    # A long input cut with truncate=true: counted once, its length before the cut in the histogram.
    long_text = NEWS[0] * 30
    full = len(tokenizer(long_text)["input_ids"])
    assert full > 512
    before = samples(client)
    response = client.post("/embed", json={"inputs": [long_text, NEWS[1]], "truncate": True})
    assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "1"
    after = samples(client)
    assert value(before, after, "finbert2_truncated_inputs_total", model="retriever") == 1
    assert value(before, after, "finbert2_input_tokens_sum", model="retriever") == full + lengths[1]
    assert value(before, after, "finbert2_input_tokens_bucket", model="retriever", le="512.0") == 1

    # Refusals by reason, and the classifier's inputs under its own name.
    before = samples(client)
    assert client.post("/embed", json={"inputs": NEWS + NEWS}).status_code == 413
    assert client.post("/embed", json={"inputs": [long_text]}).status_code == 422
    assert client.post("/classify", json={"inputs": NEWS[:2]}).status_code == 200
    after = samples(client)
    assert value(before, after, "finbert2_request_failures_total", route="/embed", error_type="validation") == 2
    assert value(before, after, "finbert2_requests_total", route="/embed", status="413") == 1
    assert value(before, after, "finbert2_requests_total", route="/embed", status="422") == 1
    assert value(before, after, "finbert2_truncated_inputs_total", model="retriever") == 0
    assert value(before, after, "finbert2_input_tokens_count", model="sentiment") == 2
    assert value(before, after, "finbert2_request_duration_seconds_count", route="/classify") == 1


def test_drift_metrics_move_when_the_inputs_language_changes(models, encoder, tmp_path):
    with serving(retriever=str(models["retriever"]), index=str(tmp_path / "index")) as client:
        check_drift(client, encoder)


def check_drift(client: TestClient, encoder) -> None:
    tokenizer = encoder.tokenizer
    assert client.post("/index/documents", json={"documents": [
        {"id": str(i), "text": text} for i, text in enumerate(NEWS)]}).status_code == 200
    state = client.app.state.server.index.state
    # Each news item is one window: the index holds encode(NEWS); the reference is their mean (taken from
    # the server's own float32 rows, as the distances compared below are ~1e-6).
    np.testing.assert_allclose(state.vectors, encoder.encode(NEWS), atol=1e-5)
    index_mean = state.vectors.astype(np.float64).mean(axis=0)
    assert ("finbert2_embedding_mean_cosine", (("model", "retriever"),)) not in samples(client)  # no traffic yet
    seen = []

    def unit(rows):
        rows = np.asarray(rows, dtype=np.float64)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def cosine_to_index(vectors):
        mean = np.mean(vectors, axis=0)  # fewer than DRIFT_WINDOW inputs: the exact mean
        return mean @ index_mean / (np.linalg.norm(mean) * np.linalg.norm(index_mean))

    chinese = [text[::-1] for text in NEWS]  # same language and vocabulary, other texts
    before = samples(client)
    seen += list(unit(client.post("/embed", json={"inputs": chinese, "normalize": False}).json()))
    after = samples(client)
    ids = tokenizer(chinese)["input_ids"]
    unknown = sum(row.count(tokenizer.unk_token_id) for row in ids)
    assert value(before, after, "finbert2_unknown_tokens_total", model="retriever") == unknown
    chinese_share = unknown / value(before, after, "finbert2_content_tokens_total", model="retriever")
    chinese_cosine = after[("finbert2_embedding_mean_cosine", (("model", "retriever"),))]
    # A random tiny encoder maps every text near one direction: cosines sit close to 1, so their
    # distance to 1 is what is compared (the vectors are the server's own float32 ones, unnormalised).
    assert 1 - chinese_cosine == pytest.approx(1 - cosine_to_index(seen), rel=0.02)

    before = samples(client)
    seen += list(unit(client.post("/embed", json={"inputs": KOREAN, "normalize": False}).json()))
    after = samples(client)
    ids = tokenizer(KOREAN)["input_ids"]
    unknown = sum(row.count(tokenizer.unk_token_id) for row in ids)
    content = value(before, after, "finbert2_content_tokens_total", model="retriever")
    assert content == sum(len(row) - 2 for row in ids)
    assert value(before, after, "finbert2_unknown_tokens_total", model="retriever") == unknown
    assert unknown / content > 0.5 > chinese_share
    korean_cosine = after[("finbert2_embedding_mean_cosine", (("model", "retriever"),))]
    assert 1 - korean_cosine == pytest.approx(1 - cosine_to_index(seen), rel=0.02)
    assert 1 - korean_cosine > 3 * (1 - chinese_cosine)

    # Indexed documents are the reference, not traffic: adding them leaves the running mean alone,
    # and the next request is compared with the new index's mean.
    server_drift = client.app.state.server.drift
    mean = server_drift.mean.copy()
    client.post("/index/documents", json={"documents": [{"id": "k", "text": KOREAN[0]}]})
    np.testing.assert_array_equal(server_drift.mean, mean)
    index_mean = client.app.state.server.index.state.vectors.astype(np.float64).mean(axis=0)
    assert len(client.app.state.server.index.state.vectors) == len(NEWS) + 1
    seen += list(unit(client.post("/embed", json={"inputs": KOREAN[1], "normalize": False}).json()))
    cosine = samples(client)[("finbert2_embedding_mean_cosine", (("model", "retriever"),))]
    assert 1 - cosine == pytest.approx(1 - cosine_to_index(seen), rel=0.02)


def test_running_mean_becomes_an_exponential_average_after_its_window():
    drift = EmbeddingDrift(window=2)
    assert drift.cosine(np.ones(2)) is None
    drift.observe(np.array([[3.0, 0.0], [0.0, 2.0], [0.0, 5.0]]))  # averaged as unit vectors
    # (1,0); then mean of two: (0.5,0.5); then window 2: m + (x - m)/2 = (0.25, 0.75)
    np.testing.assert_allclose(drift.mean, [0.25, 0.75])
    assert drift.cosine(np.array([1.0, 0.0])) == pytest.approx(0.25 / np.hypot(0.25, 0.75))


def test_unknown_tokens_count_byte_fallback_pieces_and_skip_special_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("央", -1.0), ("行", -1.0)]
    pieces += [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>")
    row = [tokenizer.bos_token_id, *tokenizer("央行Ж", add_special_tokens=False)["input_ids"],
           tokenizer.eos_token_id]
    assert tokenizer.convert_ids_to_tokens(row) == ["<s>", "央", "行", "<0xD0>", "<0x96>", "</s>"]
    assert UnknownTokens(tokenizer).count([row, [tokenizer.unk_token_id]]) == (5, 3)
