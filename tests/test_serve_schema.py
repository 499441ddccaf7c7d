"""The server's contract: its live OpenAPI schema is the committed ``docs/openapi.json``, and any body
(hypothesis-generated, well-formed or not) gets one of the status codes the schema documents for
its route, with the route's error shape: never a 500."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import NEWS, REPO_ROOT, make_classifier, make_reranker, make_retriever

from finbert2.retrieve.index import current_index_dir
from finbert2.serve.app import create_app
from finbert2.serve.args import ServeArguments
from finbert2.serve.cli import openapi_schema, openapi_text

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

COMMITTED = REPO_ROOT / "docs" / "openapi.json"


def test_live_openapi_equals_the_committed_schema():
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == openapi_schema(), (
        "docs/openapi.json is stale: regenerate it with `python -m finbert2 serve --write_openapi docs/openapi.json`")
    assert COMMITTED.read_text(encoding="utf-8") == openapi_text()


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("serve-schema")
    retriever = make_retriever(tiny_tokenizer_dir, root / "retriever")
    labeler = make_classifier(tiny_tokenizer_dir, root / "labeler", ["消极", "积极"])
    reranker = make_reranker(tiny_tokenizer_dir, root / "reranker")
    app = create_app(ServeArguments(retriever=str(retriever), classifier=[str(labeler)], index=str(root / "index"),
                                    reranker=str(reranker),
                                    max_client_batch_size=4, max_body_bytes=4000))
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert test_client.post("/index/documents", json={"documents": [
            {"id": f"d{i}", "text": text} for i, text in enumerate(NEWS[:4])]}).status_code == 200
        assert test_client.get("/openapi.json").json() == openapi_schema()
        yield test_client


SCHEMA = json.loads(COMMITTED.read_text(encoding="utf-8"))
BODY_ROUTES = [(path, method) for path, methods in SCHEMA["paths"].items() for method, op in methods.items()
               if "requestBody" in op]


def documented_codes(path: str, method: str) -> set[int]:
    return {int(code) for code in SCHEMA["paths"][path][method]["responses"]}


def field_names(path: str, method: str) -> list[str]:
    ref = SCHEMA["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return list(SCHEMA["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])


# Text as JSON can carry it: lone surrogates ("\ud800") included; numbers: NaN and Infinity included.
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=30) | st.sampled_from(
    ["", " ", "\u3000", "\ud800", "a\udfffb"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | texts
    | st.sampled_from(["query", "passage", "dense", "bm25", "hybrid", "base64", *NEWS]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12)
# Ids drawn from a small pool, so one request often repeats an id or names a stored one.
ids = st.sampled_from(["d0", "d1", "new", "\ud800", "", "d0\udc00"]) | texts
documents = st.fixed_dictionaries(
    {"id": ids, "text": st.sampled_from(["", " ", *NEWS]) | texts},
    optional={"title": json_values, "source": json_values, "score": st.floats() | st.booleans()})
WRITE_BODIES = {("/index/documents", "post"): st.fixed_dictionaries({"documents": st.lists(documents, max_size=4)}),
                ("/index/documents", "delete"): st.fixed_dictionaries({"ids": st.lists(ids, max_size=4)})}


@st.composite
def bodies(draw, path: str, method: str):
    """A body: any JSON value, an object over the route's own field names (some valid, most not), or (write
    routes) a well-shaped write with repeated or hostile ids and fields."""
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values)
    if (path, method) in WRITE_BODIES and draw(st.booleans()):
        return draw(WRITE_BODIES[(path, method)])
    names = field_names(path, method)
    chosen = draw(st.lists(st.sampled_from(names + ["unknown"]), unique=True, max_size=len(names) + 1))
    return {name: draw(json_values) for name in chosen}


def index_generation(client) -> str:
    return current_index_dir(client.app.state.server.index.folder).name


@pytest.mark.parametrize(("path", "method"), BODY_ROUTES, ids=[f"{m.upper()} {p}" for p, m in BODY_ROUTES])
def test_generated_bodies_get_documented_answers(client, path, method):
    allowed = documented_codes(path, method)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
    @given(body=bodies(path, method))
    def check(body):
        before = index_generation(client)
        # Python's JSON writer: lone surrogates escaped, NaN and Infinity as the bare words its reader takes
        response = client.request(method.upper(), path, content=json.dumps(body, allow_nan=True).encode("ascii"),
                                  headers={"content-type": "application/json"})
        assert response.status_code in allowed, (response.status_code, response.text, body)
        if response.status_code >= 400:
            assert index_generation(client) == before, ("an error answer, but the index changed", body)
            error = response.json()
            if path.startswith("/v1/"):
                assert set(error["error"]) == {"message", "type", "param", "code"}
            else:
                assert set(error) == {"error", "error_type"}

    check()
