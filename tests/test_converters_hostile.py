"""Hostile input for every converter: each run either writes usable output (exit 0) or stops with one
``error: path[:line]: reason`` line (exit 2); none crashes with a traceback.

Property-based (hypothesis): the source layouts of CFBenchmark (instruction/input/response JSONL),
SC_2 and JINGEWU (CSV) and Fin-Eva (five CSV files), filled with random bytes, invalid UTF-8, control
characters, mixed-width text, missing columns and fields of the wrong type, next to plausible rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finbert2.converters import cfbenchmark_event, cfbenchmark_retrieval, cfbenchmark_sentiment, fin_eva, jingewu, sc2
from finbert2.data import read_classification, read_retrieval_eval, read_retrieval_train, read_topic_docs
from tests.hostile import ERROR_FORMAT, _encode_line, hostile_text, json_values

CASES_TRIED = {"count": 0}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# plausible values next to hostile ones, so some inputs convert and the output check runs
text_value = st.one_of(hostile_text, st.sampled_from(["公司发布年报，净利润同比增长12%。", "央行宣布降准0.5个百分点"]))
sentiment_response = st.one_of(st.sampled_from(["积极", "中性", "消极", " 积极。"]), hostile_text, json_values)
event_response = st.one_of(st.sampled_from(["公司, 投融资, 投资并购", "宏观, 社会", "行业, 行业发展"]), hostile_text,
                           json_values)
cfb_record = st.fixed_dictionaries(
    {},
    optional={"instruction": text_value, "input": st.one_of(text_value, json_values),
              "response": st.one_of(sentiment_response, event_response)},
)
cfb_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(cfb_record.map(_encode_line), st.binary(max_size=30)), max_size=6).map(b"\n".join),
)


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8", "surrogatepass")


def csv_source(header: list[str], column: st.SearchStrategy) -> st.SearchStrategy:
    rows = st.lists(st.lists(column, min_size=1, max_size=len(header) + 1), max_size=6)
    headers = st.one_of(st.just(header), st.lists(st.sampled_from(header + ["x"]), min_size=1, max_size=4))
    return st.one_of(st.binary(max_size=300), st.builds(_csv, headers, rows))


sc2_bytes = csv_source(["text", "label"], st.one_of(text_value, st.sampled_from(["0", "1", "2", ""])))
jingewu_bytes = csv_source(["", "Text", "Close", "Return", "Label"],
                           st.one_of(text_value, st.sampled_from(["1", "-1", "0", "371.4", "x"])))
fineva_bytes = csv_source(["id", "context", "question", "A", "B", "C", "D", "answer"], text_value)


@pytest.fixture(scope="module", autouse=True)
def report_cases_tried():
    yield
    print(f"\nhostile converter cases tried: {CASES_TRIED['count']}")


def _run(main, argv: list[str], source: Path) -> int:
    """Run a converter in-process; on failure, check the one-line ``error: path...: reason``."""
    CASES_TRIED["count"] += 1
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code in (0, 2), code
    if code == 2:
        lines = [line for line in stderr.getvalue().splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, stderr.getvalue()
        message = lines[0][len("error: "):]
        assert str(source) in message and ERROR_FORMAT.match(message), message
    return code


@SETTINGS
@given(content=cfb_bytes, task=st.sampled_from(["sentiment", "event"]))
def test_cfbenchmark_classification_converters(content, task):
    main = cfbenchmark_sentiment.main if task == "sentiment" else cfbenchmark_event.main
    with tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / f"{task}.jsonl", Path(tmp) / "out.jsonl"
        source.write_bytes(content)
        if _run(main, [str(source), str(output)], source) == 0:
            rows = read_classification(output)
            labels = cfbenchmark_sentiment.SENTIMENT_LABELS if task == "sentiment" else \
                cfbenchmark_event.EVENT_LEVEL1_LABELS
            assert rows.texts and set(rows.labels) <= set(labels)


CSV_CONVERTERS = {  # name: (main, source file, arguments after the source, hostile source, check of the output)
    "sc2": (sc2.main, "test_SC_2.csv", lambda out: [str(out)], sc2_bytes,
            lambda out: set(read_classification(out).labels) <= {0, 1}),
    "jingewu": (jingewu.main, "CH.csv", lambda out: ["--output_file", str(out)], jingewu_bytes,
                lambda out: bool(read_topic_docs(out).texts)),
}


@pytest.mark.parametrize("name", sorted(CSV_CONVERTERS))
@SETTINGS
@given(data=st.data())
def test_csv_converters(name, data):
    main, file_name, arguments, source_bytes, output_ok = CSV_CONVERTERS[name]
    with tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / file_name, Path(tmp) / "out.jsonl"
        source.write_bytes(data.draw(source_bytes))
        if _run(main, [str(source), *arguments(output)], source) == 0:
            assert output_ok(output)


@SETTINGS
@given(files=st.lists(fineva_bytes, min_size=len(fin_eva.CONTEXT_FILES), max_size=len(fin_eva.CONTEXT_FILES)))
def test_fin_eva_converter(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fin-eva" / "data" / "Ant"
        for relative, content in zip(fin_eva.CONTEXT_FILES, files):
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(content)
        output = Path(tmp) / "out"
        if _run(fin_eva.main, ["--input_dir", str(Path(tmp) / "fin-eva"), "--output_dir", str(output)], root) == 0:
            read_retrieval_eval(output / "eval")
            if (output / "train.jsonl").read_text(encoding="utf-8").strip():
                read_retrieval_train(output / "train.jsonl")


@SETTINGS
@given(content=cfb_bytes)
def test_cfbenchmark_retrieval_converter(content):
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "cfb" / "summary.jsonl"
        source.parent.mkdir()
        source.write_bytes(content)
        output = Path(tmp) / "out"
        if _run(cfbenchmark_retrieval.main, ["--input_dir", str(source.parent), "--output_dir", str(output)],
                source) == 0:
            read_retrieval_eval(output / "eval")
            for line in (output / "train.jsonl").read_text(encoding="utf-8").splitlines():
                assert json.loads(line)["pos"]
