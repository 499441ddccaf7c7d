"""Hostile input for every reader: each file either loads or fails with ``path:line: reason``.

Property-based (hypothesis): random bytes, invalid UTF-8, control characters, mixed full- and
half-width text, whitespace-only texts, missing columns, deep or huge JSON, multi-MB lines. No
reader may raise anything but DataError, hang, or blow up memory.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from finbert2.data import (
    read_classification,
    read_corpus,
    read_retrieval_eval,
    read_retrieval_train,
    read_topic_docs,
)
from finbert2.errors import DataError
from tests.hostile import ERROR_FORMAT, csv_bytes, jsonl_bytes

CASES_TRIED = {"count": 0}

@pytest.fixture(scope="module", autouse=True)
def report_cases_tried():
    """Print how many hostile inputs the readers met in this module (pytest -s or -rA shows it)."""
    yield
    print(f"\nhostile-input cases tried: {CASES_TRIED['count']}")


READERS = {
    "corpus.jsonl": lambda p: read_corpus(p),
    "corpus.txt": lambda p: read_corpus(p),
    "corpus.csv": lambda p: read_corpus(p),
    "cls.jsonl": lambda p: read_classification(p, label_set=["积极", "中性", "消极", "1"]),
    "cls.csv": lambda p: read_classification(p),
    "train.jsonl": lambda p: read_retrieval_train(p),
    "topics.jsonl": lambda p: read_topic_docs(p),
    "topics.csv": lambda p: read_topic_docs(p),
}


def _check(reader, path):
    CASES_TRIED["count"] += 1
    try:
        reader(path)
    except DataError as err:
        message = str(err)
        assert str(path) in message and ERROR_FORMAT.match(message), message
        assert "\n" not in message.strip() or "line" in message  # one line


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", [n for n in READERS if not n.endswith(".csv")])
@SETTINGS
@given(content=jsonl_bytes)
def test_jsonl_and_txt_readers_never_crash(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    _check(READERS[name], path)


@pytest.mark.parametrize("name", [n for n in READERS if n.endswith(".csv")])
@SETTINGS
@given(content=csv_bytes)
def test_csv_readers_never_crash(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    _check(READERS[name], path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpus=jsonl_bytes, queries=jsonl_bytes, qrels=jsonl_bytes)
def test_retrieval_eval_folder_never_crashes(tmp_path, corpus, queries, qrels):
    for name, content in [("corpus.jsonl", corpus), ("test_queries.jsonl", queries), ("test_qrels.jsonl", qrels)]:
        (tmp_path / name).write_bytes(content)
    CASES_TRIED["count"] += 1
    try:
        read_retrieval_eval(tmp_path)
    except DataError as err:
        assert str(tmp_path) in str(err)


@pytest.mark.parametrize("payload,reason", [
    (b'{"text": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper"),
    (b'{"text": ' + b"1" * 5000 + b"}", "invalid JSON"),  # beyond Python's int-digit limit
    (b'{"text": "' + "净".encode() * 2_000_000 + b'"', "invalid JSON"),  # 6 MB unterminated line
])
def test_pathological_json_lines(tmp_path, payload, reason):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + payload + b"\n")
    with pytest.raises(DataError, match=rf"big\.jsonl:2: .*{reason}"):
        read_corpus(path)
    CASES_TRIED["count"] += 1


def test_multi_megabyte_line_loads(tmp_path):
    text = "融资融券余额" * 1_000_000  # 6M characters, 18 MB on one line
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_corpus(path) == [text]
    CASES_TRIED["count"] += 1


def test_mixed_width_and_control_characters_are_kept(tmp_path):
    text = "ＡＢＣ公司\t净利润\u3000增长１２％\x07"
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"text": text, "label": "积极"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_classification(path).texts == [text]  # readers validate; they do not rewrite text


