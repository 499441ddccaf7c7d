"""Retrieval metrics against hand-computed values, with fixed rankings and a scripted mock encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finbert2.data import RetrievalEvalData
from finbert2.retrieve.evaluate import bm25_evaluation, dense_evaluation
from finbert2.retrieve.metrics import evaluate_run, markdown_table, per_query_metrics
from finbert2.retrieve.search import format_document

QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}, "q3": {"d4": 1}, "q4": {"x10": 1}}
RUN = {
    "q1": {"d0": 0.9, "d1": 0.8, "d2": 0.1},  # relevant at rank 2
    "q2": {"d2": 0.9, "d0": 0.5, "d3": 0.4},  # relevant at ranks 1 and 3
    # q3 retrieves nothing
    "q4": {f"x{i}": 1.0 - i / 100 for i in range(11)},  # relevant at rank 11
}

HAND = {
    "q1": {"ndcg_at_10": 1 / math.log2(3), "mrr_at_10": 0.5, "recall_at_1": 0.0, "recall_at_10": 1.0,
           "recall_at_100": 1.0, "map": 0.5},
    "q2": {"ndcg_at_10": (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)), "mrr_at_10": 1.0, "recall_at_1": 0.5,
           "recall_at_10": 1.0, "recall_at_100": 1.0, "map": (1 + 2 / 3) / 2},
    "q3": {name: 0.0 for name in ["ndcg_at_10", "mrr_at_10", "recall_at_1", "recall_at_10", "recall_at_100", "map"]},
    # rank 11: outside every @10 cut (mrr_at_10 is 0, not 1/11), inside recall_at_100 and map
    "q4": {"ndcg_at_10": 0.0, "mrr_at_10": 0.0, "recall_at_1": 0.0, "recall_at_10": 0.0, "recall_at_100": 1.0,
           "map": 1 / 11},
}


def test_per_query_metrics_match_hand_computation():
    got = per_query_metrics(QRELS, RUN)
    assert set(got) == set(HAND)
    for qid, expected in HAND.items():
        for name, value in expected.items():
            assert got[qid][name] == pytest.approx(value, abs=1e-6), (qid, name)


def test_mean_metrics_average_over_judged_queries():
    got = evaluate_run(QRELS, {**RUN, "unjudged": {"d0": 1.0}})
    for name in HAND["q1"]:
        assert got[name] == pytest.approx(sum(HAND[q][name] for q in HAND) / 4, abs=1e-6)


class ScriptedEncoder:
    """Vectors looked up by text: a mock encoder whose rankings are known in advance."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = {k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in vectors.items()}

    def encode_queries(self, texts, **kwargs):
        return np.stack([self.vectors["Q:" + t] for t in texts])

    def encode_passages(self, texts, **kwargs):
        return np.stack([self.vectors[t] for t in texts])


def test_dense_evaluation_with_scripted_encoder():
    data = RetrievalEvalData(
        corpus={"a": {"title": "标题A", "text": "甲"}, "b": {"title": "", "text": "乙"}, "c": {"title": "", "text": "丙"}},
        queries={"q1": "问一", "q2": "问二"},
        qrels={"q1": {"b": 1}, "q2": {"c": 1}},
    )
    encoder = ScriptedEncoder({
        "标题A 甲": [1, 0, 0], "乙": [0, 1, 0], "丙": [0, 0, 1],
        "Q:问一": [0.9, 0.5, 0.1],  # ranking a, b, c: relevant b at rank 2
        "Q:问二": [0.1, 0.2, 0.9],  # ranking c first
    })
    mean, per_query, run = dense_evaluation(encoder, data, k=3)
    assert list(run["q1"]) == ["a", "b", "c"]
    assert per_query["q1"]["mrr_at_10"] == pytest.approx(0.5)
    assert per_query["q2"]["ndcg_at_10"] == pytest.approx(1.0)
    assert mean["recall_at_1"] == pytest.approx(0.5)
    assert mean["ndcg_at_10"] == pytest.approx((1 / math.log2(3) + 1) / 2)


def test_bm25_ranks_the_document_sharing_words_first():
    data = RetrievalEvalData(
        corpus={"d1": {"title": "", "text": "贵州茅台发布年度报告，营业收入增长"},
                "d2": {"title": "", "text": "央行宣布降准，释放长期资金"},
                "d3": {"title": "", "text": "新能源汽车销量创新高"}},
        queries={"q1": "央行降准释放多少资金", "q2": "茅台营业收入"},
        qrels={"q1": {"d2": 1}, "q2": {"d1": 1}},
    )
    mean, per_query, run = bm25_evaluation(data)
    assert mean["recall_at_1"] == 1.0
    assert "d3" not in run["q1"]  # shares no word: not retrieved


def test_markdown_table_bolds_the_best():
    table = markdown_table({"bm25": {"ndcg_at_10": 0.5, "map": 0.4}, "dense": {"ndcg_at_10": 0.7, "map": 0.3}},
                           ["ndcg_at_10", "map"])
    lines = table.strip().splitlines()
    assert lines[0] == "| model | ndcg_at_10 | map |"
    assert lines[2] == "| bm25 | 0.5000 | **0.4000** |"
    assert lines[3] == "| dense | **0.7000** | 0.3000 |"


def test_format_document_upstream_layout():
    doc = {"title": "美联储加息对科技股估值影响分析", "company": "", "institution": "摩根士丹利", "industry": "科技综合",
           "author": "张伟", "type": "策略报告", "content": "2023年美联储连续加息。"}
    assert format_document(doc) == ("文章标题：美联储加息对科技股估值影响分析\n公司名称：\n发布机构：摩根士丹利\n"
                                    "行业：科技综合\n作者：张伟\n策略报告：2023年美联储连续加息。")
    assert format_document({"title": "标题", "text": "正文"}) == "标题 正文"
    assert format_document({"title": "", "text": "正文"}) == "正文"


def test_per_source_ndcg_and_table_against_hand_values():
    from finbert2.retrieve.evaluate import per_source_ndcg, per_source_table

    per_query = per_query_metrics(QRELS, RUN)
    sources = {"q1": "news", "q2": "news", "q3": "report"}  # q4 names no source
    got = per_source_ndcg(per_query, sources)
    assert got == pytest.approx({"(none)": 0.0, "news": (HAND["q1"]["ndcg_at_10"] + HAND["q2"]["ndcg_at_10"]) / 2,
                                 "report": 0.0})
    data = RetrievalEvalData(queries={q: q for q in QRELS}, qrels=QRELS, query_sources=sources)
    table = per_source_table({"bm25": got}, data)
    assert "| model | (none) (1) | news (2) | report (1) |" in table
    assert f"| bm25 | 0.0000 | {got['news']:.4f} | 0.0000 |" in table
    assert per_source_table({}, data) == ""  # queries without sources: no section


def test_query_source_must_be_a_string(tmp_path):
    from finbert2.data import read_retrieval_eval
    from finbert2.errors import DataError

    (tmp_path / "corpus.jsonl").write_text('{"id": "d1", "text": "甲"}\n', encoding="utf-8")
    (tmp_path / "test_queries.jsonl").write_text('{"id": "q1", "text": "问", "source": 3}\n', encoding="utf-8")
    (tmp_path / "test_qrels.jsonl").write_text('{"qid": "q1", "docid": "d1"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"test_queries\.jsonl:1: field 'source' must be a non-empty string"):
        read_retrieval_eval(tmp_path)


def test_paired_bootstrap_against_hand_computed_values():
    from finbert2.retrieve.metrics import paired_bootstrap

    # differences +0.5, 0, -0.5 (q4 is scored by one side only and left out): mean 0, one win, one loss
    diff = paired_bootstrap({"q1": 1.0, "q2": 0.5, "q3": 0.0, "q4": 1.0}, {"q1": 0.5, "q2": 0.5, "q3": 0.5})
    assert diff["mean"] == pytest.approx(0.0) and diff["queries"] == 3
    assert (diff["wins"], diff["losses"]) == (1, 1)
    # a resampled mean of three values from {-0.5, 0, 0.5} lies within [-0.5, 0.5], and 10,000 draws reach past +-1/3
    assert -0.5 <= diff["low"] < -1 / 3 + 1e-9 and 1 / 3 - 1e-9 < diff["high"] <= 0.5
    # every query gains 0.2: each resample's mean is 0.2, so the interval is that point
    same = paired_bootstrap({f"q{i}": 0.7 for i in range(5)}, {f"q{i}": 0.5 for i in range(5)})
    assert same["low"] == pytest.approx(0.2) and same["high"] == pytest.approx(0.2) and same["wins"] == 5
    # the seed fixes the interval
    assert paired_bootstrap({"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 0.5}, seed=3) == \
        paired_bootstrap({"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 0.5}, seed=3)
    with pytest.raises(ValueError, match="share no query"):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})
