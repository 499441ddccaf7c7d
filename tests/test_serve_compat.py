"""``finbert2 serve`` as TEI and OpenAI clients use it, and the defects a hostile client found: strict
bodies refused before anything is written, one answer for empty text, Bearer-only auth, HEAD probes,
/v1/models, token arrays, and TEI's /tokenize, /decode, /similarity, /embed_all and /predict checked
against the tokenizer and models called directly."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serve_support import NEWS, ServerProcess, make_classifier, make_retriever

from finbert2.retrieve.index import current_index_dir
from finbert2.serve.app import create_app
from finbert2.serve.args import ServeArguments

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("serve-compat")
    return {"retriever": make_retriever(tiny_tokenizer_dir, root / "retriever"),
            "sentiment": make_classifier(tiny_tokenizer_dir, root / "sentiment", ["消极", "中性", "积极"]),
            "index": root / "index"}


@pytest.fixture(scope="module")
def client(model_dirs):
    app = create_app(ServeArguments(retriever=str(model_dirs["retriever"]), classifier=[str(model_dirs["sentiment"])],
                                    index=str(model_dirs["index"]), api_key=KEY, max_client_batch_size=8,
                                    served_model_name=["e5", "text-embedding-3-small"]))
    with TestClient(app, headers=AUTH) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        added = test_client.post("/index/documents", json={"documents": [
            {"id": f"n{i}", "title": f"新闻{i}", "text": text, "source": "测试"} for i, text in enumerate(NEWS)]})
        assert added.status_code == 200, added.text
        yield test_client


@pytest.fixture(scope="module")
def direct(model_dirs):
    from finbert2.classify.inference import SequenceClassifier
    from finbert2.retrieve.encoder import DenseEncoder

    return {"encoder": DenseEncoder.from_pretrained(str(model_dirs["retriever"]), device="cpu"),
            "classifier": SequenceClassifier.from_pretrained(str(model_dirs["sentiment"]), device="cpu")}


def send(client: TestClient, method: str, path: str, body, **kwargs):
    """A body as Python's JSON writer sends it: lone surrogates escaped, NaN and Infinity as bare words."""
    return client.request(method, path, content=json.dumps(body, allow_nan=True).encode("ascii"),
                          headers={"content-type": "application/json", **AUTH}, **kwargs)


def refused(response, status: int, error_type: str, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    code = body["error"]["code"] if isinstance(body["error"], dict) else body["error_type"]
    assert code == error_type and all(w in error for w in words), body
    return error


def generation(client: TestClient):
    return current_index_dir(client.app.state.server.index.folder).name


def stored_ids(client: TestClient) -> set[str]:
    index = client.app.state.server.index
    index.refresh()
    return set(index.state.document_ids)


# --- the defects: each refused with 422/400 before anything is written ---------------------------------

WRITES_REFUSED = [
    ("DELETE", {"ids": ["n0", "\ud800"]}, 422, "validation", ["ids.1", "surrogate"]),  # once a 500 after deleting n0
    ("POST", {"documents": [{"id": "n1", "text": "替换"}, {"id": "\udfff", "text": "新"}]}, 422, "validation",
     ["documents.1.id"]),
    ("POST", {"documents": [{"id": "n1", "text": "替换", "来源\ud800": "x"}]}, 422, "validation", ["surrogate"]),
    ("POST", {"documents": [{"id": "n1", "text": "替换", "score": float("nan")}]}, 422, "validation",
     ["documents.0.score", "finite"]),
    ("POST", {"documents": [{"id": "n1", "text": "替换", "meta": {"x": [float("inf")]}}]}, 422, "validation",
     ["documents.0.meta.x.0"]),
    ("POST", {"documents": [{"id": "n1", "text": "替换", "title": True}]}, 422, "validation", ["title"]),
    ("POST", {"documents": [{"id": "n1", "text": "a"}, {"id": "n2", "text": "b"}, {"id": "n1", "text": "c"}]},
     422, "validation", ["repeated ids", "n1"]),
    ("DELETE", {"ids": ["n0", "n2", "n0", "n2"]}, 422, "validation", ["repeated ids", "n0, n2"]),
    ("POST", {"documents": [{"id": "n1", "text": ""}]}, 400, "empty", []),
    ("POST", {"documents": [{"id": "n1", "text": "替换"}, {"id": "new", "text": " \u3000"}]}, 400, "empty", []),
]


@pytest.mark.parametrize(("method", "body", "status", "error_type", "words"), WRITES_REFUSED)
def test_refused_writes_write_nothing(client, method, body, status, error_type, words):
    before, ids = generation(client), stored_ids(client)
    response = send(client, method, "/index/documents", body)
    refused(response, status, error_type, *words)
    assert generation(client) == before and stored_ids(client) == ids == {f"n{i}" for i in range(len(NEWS))}
    assert client.get("/info").json()["index"]["documents"] == len(NEWS)


def test_loose_types_and_bad_text_on_read_routes(client, direct):
    refused(send(client, "POST", "/v1/embeddings", {"input": "x", "dimensions": True}), 422, "validation",
            "dimensions")
    refused(send(client, "POST", "/search", {"query": "x", "top_k": True}), 422, "validation", "top_k")
    refused(send(client, "POST", "/search", {"query": "x", "top_k": 2.0}), 422, "validation", "top_k")
    refused(send(client, "POST", "/embed", {"inputs": "x", "truncate": 1}), 422, "validation", "truncate")
    refused(send(client, "POST", "/search", {"query": "x", "filter": {"source\ud800": "测试"}}), 422, "validation")
    refused(send(client, "POST", "/search", {"query": "x", "filter": {"source": ["\ud800"]}}), 422, "validation",
            "filter.source.0")
    refused(send(client, "POST", "/search", {"query": "x", "filter": {"n": float("-inf")}}), 422, "validation")
    refused(send(client, "POST", "/v1/embeddings", {"input": "x", "model": "\ud800"}), 422, "validation")
    refused(send(client, "POST", "/embed", {"inputs": "x", "prompt_name": "\udc00"}), 422, "validation")
    # a number too large for a float reads as Infinity: refused too
    refused(client.post("/embed", content=b'{"inputs": "x", "n": 1e999}', headers={"content-type": "application/json"}),
            422, "validation")
    refused(send(client, "POST", "/search", {"query": ""}), 400, "empty")
    refused(send(client, "POST", "/search", {"query": " "}), 400, "empty")
    assert send(client, "POST", "/v1/embeddings", {"input": "x", "dimensions": 3}).json()["data"][0]["embedding"].__len__() == 3


# --- auth and probes -----------------------------------------------------------------------------------

def test_only_one_bearer_header_is_accepted(client):
    def status(headers) -> int:
        return client.post("/embed", json={"inputs": "x"}, headers=headers).status_code

    assert status(AUTH) == 200 and status({"Authorization": f"bearer {KEY}"}) == 200  # the scheme is case-blind
    for wrong in (KEY, f"Bearer  {KEY}", f"Bearer {KEY} ", f" Bearer {KEY}", f"Basic {KEY}", "Bearer", ""):
        refused(client.post("/embed", json={"inputs": "x"}, headers={"Authorization": wrong}), 401, "unauthorized")
    refused(client.post("/embed", json={"inputs": "x"}, headers=[("Authorization", f"Bearer {KEY}")] * 2),
            401, "unauthorized")
    refused(client.post("/embed", json={"inputs": "x"}, headers=[("Authorization", "Bearer nope"),
                                                                  ("Authorization", f"Bearer {KEY}")]),
            401, "unauthorized")
    refused(client.get("/v1/models", headers={"Authorization": KEY}), 401, "unauthorized")


def test_head_on_the_probe_routes(client, model_dirs):
    for path in ("/", "/health", "/ready"):
        response = client.head(path, headers={"Authorization": ""})  # open routes: no key needed
        assert response.status_code == 200 and response.content == b"", (path, response.status_code)
    not_loaded = TestClient(create_app(ServeArguments(retriever=str(model_dirs["retriever"]))))  # no lifespan
    assert not_loaded.head("/ready").status_code == 503 and not_loaded.head("/health").status_code == 200


# --- OpenAI parity -------------------------------------------------------------------------------------

def test_models_list_and_any_model_name(client, direct):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in models["data"]] == [
        ("e5", "model", "finbert2"), ("text-embedding-3-small", "model", "finbert2"), ("sentiment", "model", "finbert2")]
    assert all(isinstance(m["created"], int) and m["created"] > 1_600_000_000 for m in models["data"])
    expected = direct["encoder"].encode(NEWS[:1])[0]
    for name in ("e5", "text-embedding-3-small", "default", None):
        body = client.post("/v1/embeddings", json={"input": NEWS[0], "model": name}).json()
        np.testing.assert_allclose(body["data"][0]["embedding"], expected, atol=1e-5)
        assert body["model"] == "e5"
    error = refused(client.post("/v1/embeddings", json={"input": "x", "model": "sentiment"}), 404, "not_found")
    assert "'e5', 'text-embedding-3-small'" in error


def test_token_arrays_are_this_tokenizers_ids(client, direct):
    tokenizer = direct["encoder"].tokenizer
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in NEWS[:3]]
    expected = direct["encoder"].encode(NEWS[:3])
    many = client.post("/v1/embeddings", json={"input": ids}).json()
    np.testing.assert_allclose([d["embedding"] for d in many["data"]], expected, atol=1e-5)
    assert many["usage"]["prompt_tokens"] == sum(len(i) + 2 for i in ids)  # [CLS] and [SEP] added
    one = client.post("/v1/embeddings", json={"input": ids[0]}).json()
    np.testing.assert_allclose(one["data"][0]["embedding"], expected[0], atol=1e-5)
    tiktoken_ids = [9906, 1917, 100256]  # "Hello world" in cl100k_base: beyond this 1k-word vocabulary
    error = refused(client.post("/v1/embeddings", json={"input": [tiktoken_ids]}), 422, "validation", "tiktoken")
    assert f"vocabulary of {len(tokenizer)} ids" in error
    refused(client.post("/v1/embeddings", json={"input": [[-1]]}), 422, "validation")
    refused(client.post("/v1/embeddings", json={"input": [[1, 2], []]}), 400, "empty")
    refused(client.post("/v1/embeddings", json={"input": [[5] * 600]}), 422, "validation", "truncate")
    cut = client.post("/v1/embeddings", json={"input": [[5] * 600], "truncate": True})
    assert cut.status_code == 200 and cut.headers["x-truncated-inputs"] == "1"


def test_openai_route_takes_2048_inputs_tei_routes_32(client, direct):
    texts = [NEWS[i % len(NEWS)] for i in range(40)]  # over this server's TEI limit of 8
    refused(client.post("/embed", json={"inputs": texts}), 413, "validation")
    body = client.post("/v1/embeddings", json={"input": texts}).json()
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], direct["encoder"].encode(texts), atol=1e-5)
    refused(client.post("/v1/embeddings", json={"input": ["x"] * 2049}), 413, "validation", "2048")


# --- TEI's other routes --------------------------------------------------------------------------------

def test_tokenize_and_decode(client, direct):
    tokenizer = direct["encoder"].tokenizer
    text = "央行ABC下调利率"
    tokens = client.post("/tokenize", json={"inputs": text}).json()
    assert len(tokens) == 1
    ids = tokenizer(text)["input_ids"]
    assert [t["id"] for t in tokens[0]] == ids
    first, *middle, last = tokens[0]
    assert first == {"id": tokenizer.cls_token_id, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert last["special"] and last["text"] == "[SEP]"
    assert all(not t["special"] and t["text"] == text[t["start"]:t["stop"]] for t in middle)
    assert "".join(t["text"] for t in middle) == text  # no spaces in this text: the spans tile it
    bare = client.post("/tokenize", json={"inputs": [text, "利率"], "add_special_tokens": False}).json()
    assert [t["id"] for t in bare[0]] == ids[1:-1] and len(bare) == 2
    decoded = client.post("/decode", json={"ids": ids}).json()
    assert decoded == [tokenizer.decode(ids, skip_special_tokens=True)]
    both = client.post("/decode", json={"ids": [ids, ids[1:3]], "skip_special_tokens": False}).json()
    assert both == tokenizer.batch_decode([ids, ids[1:3]]) and both[0].startswith("[CLS]")
    refused(client.post("/decode", json={"ids": [len(tokenizer)]}), 422, "validation", "vocabulary")
    refused(client.post("/decode", json={"ids": []}), 400, "empty")
    refused(client.post("/tokenize", json={"inputs": ""}), 400, "empty")


def test_similarity_is_the_cosine_of_the_vectors(client, direct):
    encoder = direct["encoder"]
    source, sentences = NEWS[0], NEWS[1:4]
    scores = client.post("/similarity", json={"inputs": {"source_sentence": source, "sentences": sentences}}).json()
    vectors = encoder.encode([source, *sentences])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, vectors[1:] @ vectors[0], atol=1e-5)
    refused(client.post("/similarity", json={"inputs": {"source_sentence": source, "sentences": []}}), 400, "empty")
    refused(client.post("/similarity", json={"inputs": {"source_sentence": source, "sentences": ["x"]},
                                             "parameters": 1}), 422, "validation")


def test_embed_all_is_the_last_hidden_state(client, direct):
    encoder = direct["encoder"]
    states = client.post("/embed_all", json={"inputs": NEWS[:2]}).json()
    for text, served in zip(NEWS[:2], states):
        ids = encoder.tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            expected = encoder.model(**ids).last_hidden_state[0].numpy()
        np.testing.assert_allclose(served, expected, atol=1e-4)
    refused(client.post("/embed_all", json={"inputs": "央行" * 400}), 422, "validation")


def test_predict_is_classify_in_teis_shape(client):
    classified = client.post("/classify", json={"inputs": NEWS[:2]}).json()
    predicted = client.post("/predict", json={"inputs": NEWS[:2]}).json()
    assert predicted == [[{"score": i["score"], "label": i["label"]} for i in answer] for answer in classified]
    single = client.post("/predict", json={"inputs": NEWS[0], "raw_scores": True}).json()
    assert set(single[0]) == {"score", "label"} and len(single) == 3
    refused(client.post("/predict", json={"inputs": []}), 400, "empty")


# --- the openai client, unmodified, against a live server --------------------------------------------

def test_the_openai_client_against_a_live_server(model_dirs, direct):
    import openai

    texts = [f"{NEWS[i % len(NEWS)]}（第{i}条）" for i in range(100)]
    expected = direct["encoder"].encode(texts)
    with ServerProcess("--retriever", model_dirs["retriever"], "--classifier", model_dirs["sentiment"],
                       "--served_model_name", "e5", "text-embedding-3-small", env={"FINBERT2_API_KEY": KEY}) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["e5", "text-embedding-3-small", "sentiment"]
        floats = client.embeddings.create(model="text-embedding-3-small", input=texts[:3], encoding_format="float")
        np.testing.assert_allclose([d.embedding for d in floats.data], expected[:3], atol=1e-5)
        packed = client.embeddings.create(model="e5", input=texts[0], encoding_format="base64")
        vector = packed.data[0].embedding
        if isinstance(vector, str):  # the client hands base64 back as sent when it was asked for explicitly
            vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
        np.testing.assert_allclose(vector, expected[0], atol=1e-6)
        short = client.embeddings.create(model="e5", input=texts[0], dimensions=16).data[0].embedding
        np.testing.assert_allclose(short, expected[0][:16] / np.linalg.norm(expected[0][:16]), atol=1e-5)
        hundred = client.embeddings.create(model="text-embedding-3-small", input=texts)  # the client's default path
        assert [d.index for d in hundred.data] == list(range(100))
        np.testing.assert_allclose([d.embedding for d in hundred.data], expected, atol=1e-5)
        with pytest.raises(openai.NotFoundError, match="classifier"):
            client.embeddings.create(model="sentiment", input="x")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
