"""The data layer: every format reads, and every bad input stops with ``path:line: reason``."""

from __future__ import annotations

import json

import pytest

from finbert2.data import (
    iter_corpus,
    read_classification,
    read_corpus,
    read_retrieval_eval,
    read_retrieval_train,
    read_topic_docs,
    write_jsonl,
)
from finbert2.errors import DataError


def _write(path, content: bytes | str):
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


GOOD = '{"text": "公司净利润增长"}\n'

# (case name, file content, expected line, expected reason fragment)
CORPUS_CASES = [
    ("invalid_json", GOOD + '{"text": "未闭合\n', 2, "invalid JSON"),
    ("missing_field", GOOD + '{"body": "营业收入"}\n', 2, "missing field 'text'"),
    ("empty_field", GOOD + GOOD + '{"text": "   "}\n', 3, "field 'text' is empty"),
    ("wrong_type", GOOD + '{"text": 42}\n', 2, "field 'text' must be a string, got int"),
    ("not_an_object", GOOD + '["text"]\n', 2, "expected a JSON object, got list"),
    ("invalid_utf8", GOOD.encode() + b'{"text": "\xe5\x87\x80\xff"}\n', 2, "invalid UTF-8"),
    ("deep_nesting", GOOD + '{"text": "a", "x": ' + "[" * 5000 + "]" * 5000 + "}\n", 2, "nested deeper"),
]


@pytest.mark.parametrize("name,content,line,reason", CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_corpus_bad_row_names_file_and_line(tmp_path, name, content, line, reason):
    path = _write(tmp_path / "corpus.jsonl", content)
    with pytest.raises(DataError) as err:
        read_corpus(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert reason in str(err.value)


def test_empty_and_blank_files_are_errors(tmp_path):
    for name, content in [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"), ("empty.txt", b"")]:
        path = _write(tmp_path / name, content)
        with pytest.raises(DataError, match=r": file is empty$"):
            read_corpus(path)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file$"):
        read_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        read_corpus(tmp_path)


def test_corpus_formats_txt_jsonl_csv(tmp_path):
    txt = _write(tmp_path / "a.txt", "第一篇\n\n第二篇\u2028同一行\n")
    jsonl = _write(tmp_path / "b.jsonl", '{"text": "第三篇", "id": 1}\n')
    csv_file = _write(tmp_path / "c.csv", 'id,content\n1,"第四篇,有逗号"\n')
    assert read_corpus(txt) == ["第一篇", "第二篇\u2028同一行"]  # U+2028 does not end a line
    assert read_corpus([jsonl]) == ["第三篇"]
    assert list(iter_corpus(csv_file, text_field="content")) == ["第四篇,有逗号"]


def test_csv_errors(tmp_path):
    bad_columns = _write(tmp_path / "bad.csv", "text,label\n好消息,积极\n只有一列\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: expected 2 columns"):
        read_classification(bad_columns)
    header_only = _write(tmp_path / "header.csv", "text,label\n")
    with pytest.raises(DataError, match="header but no rows"):
        read_classification(header_only)
    bad_utf8 = _write(tmp_path / "utf.csv", "text,label\n好,积极\n".encode() + b"\xff\xfe,x\n")
    with pytest.raises(DataError, match=r"utf\.csv:3: invalid UTF-8"):
        read_classification(bad_utf8)


def test_classification_labels(tmp_path):
    path = _write(tmp_path / "cls.jsonl",
                  '{"text": "利润大增", "label": "积极"}\n{"text": "亏损扩大", "label": "消极"}\n')
    data = read_classification(path, label_set=["积极", "中性", "消极"])
    assert data.labels == ["积极", "消极"] and not data.multi_label
    with pytest.raises(DataError) as err:
        read_classification(path, label_set=["积极", "中性"])
    assert str(err.value) == f"{path}:2: label '消极' is not in the declared label set ['中性', '积极']"

    ints = _write(tmp_path / "ints.csv", "text,label\n上涨,1\n下跌,0\n")
    assert read_classification(ints).labels == ["1", "0"]

    multi = _write(tmp_path / "multi.jsonl",
                   '{"text": "a", "label": ["银行", "证券"]}\n{"text": "b", "label": "银行"}\n')
    with pytest.raises(DataError, match=r"multi\.jsonl:2: field 'label' must be a list of labels"):
        read_classification(multi)
    bool_label = _write(tmp_path / "bool.jsonl", '{"text": "a", "label": true}\n')
    with pytest.raises(DataError, match="must be a string or integer, got bool"):
        read_classification(bool_label)


def test_retrieval_train(tmp_path):
    good = {"query": "净利润是多少", "pos": ["净利润为3亿元"], "neg": ["营收为5亿元"]}
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [good, {**good, "neg": "不是列表"}])
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'neg' must be a list of strings, got str"):
        read_retrieval_train(path)
    write_jsonl(path, [good, {**good, "pos": []}])
    with pytest.raises(DataError, match=r":2: field 'pos' is an empty list"):
        read_retrieval_train(path)
    write_jsonl(path, [{"query": "q", "pos": ["p"]}])
    with pytest.raises(DataError, match=r":1: missing field 'neg'"):
        read_retrieval_train(path)
    assert read_retrieval_train(path, require_neg=False) == [{"query": "q", "pos": ["p"], "neg": []}]


def _eval_folder(root, qrels):
    write_jsonl(root / "corpus.jsonl", [{"id": "d1", "title": "", "text": "文本一"}, {"id": 2, "text": "文本二"}])
    write_jsonl(root / "test_queries.jsonl", [{"id": "q1", "text": "问题"}])
    write_jsonl(root / "test_qrels.jsonl", qrels)
    return root


def test_retrieval_eval_folder(tmp_path):
    folder = _eval_folder(tmp_path, [{"qid": "q1", "docid": "2", "relevance": 1}])
    data = read_retrieval_eval(folder)
    assert data.qrels == {"q1": {"2": 1}} and data.corpus["2"]["text"] == "文本二"
    _eval_folder(tmp_path, [{"qid": "q1", "docid": "d1", "relevance": 1}, {"qid": "q1", "docid": "d9"}])
    with pytest.raises(DataError, match=r"test_qrels\.jsonl:2: docid 'd9' is not in corpus\.jsonl"):
        read_retrieval_eval(folder)
    with pytest.raises(DataError, match=r"dev_queries\.jsonl: no such file"):
        read_retrieval_eval(folder, split="dev")
    with pytest.raises(DataError, match="no such folder"):
        read_retrieval_eval(tmp_path / "missing")


def test_topic_docs_jsonl_and_csv(tmp_path):
    jsonl = _write(tmp_path / "t.jsonl", '{"text": "央行降准", "date": "2024-01-02"}\n{"text": "芯片涨价"}\n')
    docs = read_topic_docs(jsonl)
    assert docs.texts == ["央行降准", "芯片涨价"] and docs.dates == ["2024-01-02", None]
    csv_file = _write(tmp_path / "titles.csv", ",Text,Label\n1,原油收跌,0\n")
    assert read_topic_docs(csv_file).texts == ["原油收跌"]  # falls back to the Text column
    bad = _write(tmp_path / "bad.jsonl", '{"text": "a", "date": 20240101}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'date' must be a string"):
        read_topic_docs(bad)


@pytest.mark.parametrize("name,content,line,reason", CORPUS_CASES[:4], ids=[c[0] for c in CORPUS_CASES[:4]])
def test_cli_stops_before_work_with_one_line(tmp_path, run_cli, name, content, line, reason):
    corpus = _write(tmp_path / "corpus.jsonl", content)
    out = tmp_path / "run"
    result = run_cli("tokenizer", "--train_data", corpus, "--output_dir", out, "--vocab_size", "50")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {corpus}:{line}: ") and reason in last
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing written before the input was valid


def test_cli_missing_path(tmp_path, run_cli):
    result = run_cli("tokenizer", "--train_data", tmp_path / "absent.jsonl", "--output_dir", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'absent.jsonl'}: no such file"


def test_write_jsonl_round_trip(tmp_path):
    rows = [{"text": "中文", "n": 1}, {"text": "\u2028换行"}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    assert [json.loads(line) for line in (tmp_path / "x.jsonl").read_text(encoding="utf-8").split("\n") if line] == rows
    assert not list(tmp_path.glob(".x.jsonl.*"))  # no temporary file left behind
