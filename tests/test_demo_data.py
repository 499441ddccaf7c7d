"""The committed synthetic demo data in data/demo/: reproducible from its generator, well formed,
and shaped the way the pipeline stages expect (formats in DESIGN.md section 4)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from finbert2.demo.generate import generate_demo_data, main

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"
LABELS = {"积极", "中性", "消极"}
MINIMUM_ROWS = {
    "corpus.jsonl": 3000,
    "sentiment/train.jsonl": 600,
    "sentiment/validation.jsonl": 150,
    "sentiment/test.jsonl": 150,
    "retrieval/train.jsonl": 400,
    "retrieval/queries.jsonl": 400,
    "retrieval/candidates.jsonl": 1500,
    "retrieval/eval/corpus.jsonl": 800,
    "retrieval/eval/test_queries.jsonl": 150,
    "retrieval/eval/test_qrels.jsonl": 150,
    "retrieval/validation/corpus.jsonl": 1100,
    "retrieval/validation/test_queries.jsonl": 100,
    "retrieval/validation/test_qrels.jsonl": 100,
    "topics/titles.jsonl": 1500,
}


def read_jsonl(relative: str, root: Path = DEMO_DIR) -> list[dict]:
    with (root / relative).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_regenerating_with_seed_42_reproduces_the_committed_files(tmp_path):
    counts = main(["--output_dir", str(tmp_path), "--seed", "42"])
    # data/demo/tokenizer/ is the tokenizer stage's output on this data, not the generator's.
    committed = {name: data for name, data in files_under(DEMO_DIR).items() if not name.startswith("tokenizer/")}
    regenerated = files_under(tmp_path)
    assert sorted(regenerated) == sorted(committed)
    changed = [name for name in committed if committed[name] != regenerated[name]]
    assert not changed, f"regenerate with: python -m finbert2.demo.generate --output_dir data/demo ({changed})"
    assert counts == {name: len(read_jsonl(name)) for name in MINIMUM_ROWS}


def test_another_seed_gives_other_text(tmp_path):
    generate_demo_data(tmp_path, seed=7)
    for name in ("corpus.jsonl", "sentiment/train.jsonl", "retrieval/train.jsonl", "topics/titles.jsonl"):
        assert (tmp_path / name).read_bytes() != (DEMO_DIR / name).read_bytes(), name


def test_files_are_utf8_jsonl_with_unix_newlines_and_small():
    total = 0
    for name in [*MINIMUM_ROWS, "README.md"]:
        raw = (DEMO_DIR / name).read_bytes()
        total += len(raw)
        assert b"\r" not in raw and raw.endswith(b"\n"), name
        text = raw.decode("utf-8")
        if name.endswith(".jsonl"):
            assert "\\u" not in text, f"{name}: Chinese must be written as is (ensure_ascii=False)"
            assert all(isinstance(json.loads(line), dict) for line in text.splitlines())
    assert total < 5 * 1024 * 1024


@pytest.mark.parametrize("name, minimum", MINIMUM_ROWS.items())
def test_row_counts_meet_minima(name, minimum):
    assert len(read_jsonl(name)) >= minimum


def test_corpus_documents_and_domain_words():
    texts = [row["text"] for row in read_jsonl("corpus.jsonl")]
    assert all(isinstance(t, str) and 1 <= t.count("。") <= 6 for t in texts)
    assert len(set(texts)) == len(texts)
    # the tokenizer stage is expected to learn these as single pieces from this corpus
    for word in ("净利润", "营业收入", "融资融券", "市盈率", "同比增长", "归母净利润", "资产负债率",
                 "北向资金", "可转债", "降准", "两融余额"):
        assert sum(word in t for t in texts) >= 200, word


def test_sentiment_labels_are_three_balanced_classes():
    seen_texts = set()
    for split in ("train", "validation", "test"):
        rows = read_jsonl(f"sentiment/{split}.jsonl")
        assert all(set(row) == {"text", "label"} and row["text"] for row in rows)
        counts = Counter(row["label"] for row in rows)
        assert set(counts) == LABELS
        balanced = len(rows) / len(LABELS)
        assert all(abs(n - balanced) <= 0.2 * balanced for n in counts.values()), (split, counts)
        texts = {row["text"] for row in rows}
        assert len(texts) == len(rows) and not texts & seen_texts, f"{split} repeats a text"
        seen_texts |= texts


def test_retrieval_training_rows_have_a_positive_and_hard_negatives():
    rows = read_jsonl("retrieval/train.jsonl")
    candidates = {row["text"] for row in read_jsonl("retrieval/candidates.jsonl")}
    for row in rows:
        assert set(row) == {"query", "pos", "neg"}
        assert len(row["pos"]) == 1 and 3 <= len(row["neg"]) <= 7
        assert row["pos"][0] not in row["neg"] and len(set(row["neg"])) == len(row["neg"])
        assert set(row["pos"]) | set(row["neg"]) <= candidates
    mining_input = read_jsonl("retrieval/queries.jsonl")
    assert [{"query": r["query"], "pos": r["pos"]} for r in rows] == mining_input


@pytest.mark.parametrize("folder", ["eval", "validation"])
def test_retrieval_qrels_point_at_existing_queries_and_documents(folder):
    corpus_ids = [row["id"] for row in read_jsonl(f"retrieval/{folder}/corpus.jsonl")]
    query_ids = [row["id"] for row in read_jsonl(f"retrieval/{folder}/test_queries.jsonl")]
    qrels = read_jsonl(f"retrieval/{folder}/test_qrels.jsonl")
    assert len(set(corpus_ids)) == len(corpus_ids) and len(set(query_ids)) == len(query_ids)
    assert all(q["qid"] in set(query_ids) and q["docid"] in set(corpus_ids) and q["relevance"] == 1 for q in qrels)
    assert {q["qid"] for q in qrels} == set(query_ids), "every query needs a relevant document"


def test_retrieval_training_and_evaluation_are_disjoint():
    train_rows = read_jsonl("retrieval/train.jsonl")
    train_passages = {p for row in train_rows for p in row["pos"] + row["neg"]}
    train_passages |= {row["text"] for row in read_jsonl("retrieval/candidates.jsonl")}
    eval_passages = {row["text"] for row in read_jsonl("retrieval/eval/corpus.jsonl")}
    assert not train_passages & eval_passages
    eval_queries = {row["text"] for row in read_jsonl("retrieval/eval/test_queries.jsonl")}
    assert not {row["query"] for row in train_rows} & eval_queries


def test_retrieval_validation_asks_no_training_question_and_shares_nothing_with_the_test():
    """Validation passages are the training facts no training query asks (mining candidates), so only its
    questions are new; the test folder's passages and questions appear in neither."""
    train_queries = {row["query"] for row in read_jsonl("retrieval/train.jsonl")}
    train_positives = {p for row in read_jsonl("retrieval/train.jsonl") for p in row["pos"]}
    candidates = {row["text"] for row in read_jsonl("retrieval/candidates.jsonl")}
    passages = {row["text"] for row in read_jsonl("retrieval/validation/corpus.jsonl")}
    queries = {row["text"] for row in read_jsonl("retrieval/validation/test_queries.jsonl")}
    assert passages <= candidates and not passages & train_positives
    assert not queries & train_queries
    assert not passages & {row["text"] for row in read_jsonl("retrieval/eval/corpus.jsonl")}
    assert not queries & {row["text"] for row in read_jsonl("retrieval/eval/test_queries.jsonl")}


def test_topic_titles_are_short_and_dated_in_2023_2024():
    rows = read_jsonl("topics/titles.jsonl")
    for row in rows:
        assert 10 <= len(row["text"]) <= 30, row
        assert date(2023, 1, 1) <= date.fromisoformat(row["date"]) <= date(2024, 12, 31), row
    assert {row["date"][:4] for row in rows} == {"2023", "2024"}
    assert len({row["text"] for row in rows}) == len(rows)
