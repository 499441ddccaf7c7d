"""The mini reproduction (scripts/reproduce_mini.sh) end to end on the public data, at smoke size.

The general encoder is a random 2 x 64 encoder shaped like the converted multilingual-e5-small (its
tokenizer, prompts, mean pooling), placed as the finished "general" stage, which the script then skips:
every later stage runs its own code on the real data in seconds instead of e5's minutes. This test
checks the pipeline's glue (what each stage hands the next, the leakage guards, the tables); the real
e5 is trained and scored by the quickstart and tests/test_e5_*.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT, public_data_dir, require_public

# The smallest settings that still run every stage: a handful of steps, short inputs, two sentiment seeds
# (so the mean +- std path runs).
SMOKE = {
    "MLM_STEPS": "2", "RETROMAE_STEPS": "2", "SEQ_LEN": "64", "PRETRAIN_BATCH": "4", "PRETRAIN_SEQUENCES": "64",
    "EVAL_SEQUENCES": "32", "ADDED_WORDS": "100",
    "SEEDS": "42 43", "CLS_EPOCHS": "1", "CLS_MAX_LENGTH": "32", "RET_STEPS": "2", "RET_BATCH": "4", "RET_GROUP": "2",
    "RET_PASSAGE_LEN": "64", "TOPIC_DOCS": "300", "TOPIC_MIN_CLUSTER": "10",
}
ENCODERS = ["general", "finbert2-mini"]
CLASSIFY_RUNS = [f"classify/cfb_sentiment/{e}_seed{s}" for s in (42, 43) for e in ENCODERS] + [
    f"classify/{task}/{e}_seed42" for task in ("cfb_event", "sc2") for e in ENCODERS] + [
    f"classify/{task}/tfidf" for task in ("cfb_sentiment", "cfb_event", "sc2")]
RUNS = ["data", "general", "tokenizer", "mlm", "finbert2-mini", *CLASSIFY_RUNS,
        *(f"retrieve/{kind}_{e}" for e in ENCODERS for kind in ("mined", "finetuned")), "retrieve/evaluation",
        "topics/general", "topics/finbert2-mini", "topics/tfidf"]
RETRIEVAL_ROWS = ["bm25", "general", "finbert2-mini", "finetuned_general", "finetuned_finbert2-mini"]
TABLES = ["## Budget per stage", "## Classification", "### CFBenchmark sentiment (3 classes)",
          "### CFBenchmark event, level 1 (4 classes)", "### SC_2 (2 classes)", "## Retrieval (Fin-Eva held-out split)",
          "### nDCG@10 per source file", "### Fine-tuning runs", "## Topics (JINGEWU headlines)",
          "## Pretraining (finbert2-mini)"]


def without_space(text):
    return re.sub(r"\s+", "", text)


def run_script(out, timeout=1800):
    env = {**os.environ, **SMOKE, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["sh", "scripts/reproduce_mini.sh", str(public_data_dir()), str(out)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_reproduce_mini_runs_every_stage_on_public_data(tmp_path, tiny_e5_shaped_dir):
    for folder in ("cfbenchmark-basic", "fin-eva", "finbert2-upstream", "jingewu-financial-sentiment-analysis"):
        require_public(folder)
    out = tmp_path / "mini"
    shutil.copytree(tiny_e5_shaped_dir, out / "general")
    result = run_script(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "general encoder (multilingual-e5-small): already finished" in result.stdout  # the seeded encoder

    for run in RUNS:
        metrics = json.loads((out / run / "metrics.json").read_text(encoding="utf-8"))
        assert metrics, run
    # The pretraining corpus left out every classification test text and held-out Fin-Eva context.
    data = json.loads((out / "data" / "metrics.json").read_text(encoding="utf-8"))
    corpus = [json.loads(line)["text"] for line in (out / "data" / "corpus.jsonl").open(encoding="utf-8")]
    assert data["corpus_documents"] == len(corpus) > 0
    corpus_keys = {without_space(text) for text in corpus}
    for test_file in ("cfb_sentiment/test.jsonl", "cfb_event/test.jsonl", "sc2/test.jsonl"):
        test_keys = {without_space(json.loads(line)["text"])
                     for line in (out / "data" / test_file).open(encoding="utf-8")}
        assert test_keys and not corpus_keys & test_keys, test_file
    test_docs = {json.loads(line)["docid"] for line in (out / "data/fineva/eval/test_qrels.jsonl").open(encoding="utf-8")}
    test_contexts = {without_space(json.loads(line)["text"]) for line in
                     (out / "data/fineva/eval/corpus.jsonl").open(encoding="utf-8") if json.loads(line)["id"] in test_docs}
    assert test_contexts and not corpus_keys & test_contexts
    # FinBERT2-mini is e5 with the domain words added: a larger vocab than the general encoder's.
    general_vocab = json.loads((out / "general" / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    mini_vocab = json.loads((out / "finbert2-mini" / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    assert mini_vocab > general_vocab
    # Every model, zero-shot, fine-tuned and fused with BM25, scored on the same held-out queries, per source too.
    evaluation = json.loads((out / "retrieve" / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    dense = RETRIEVAL_ROWS[1:]
    for row in RETRIEVAL_ROWS + [f"{d}+bm25" for d in dense] + ["chance"]:
        assert 0.0 <= evaluation[f"{row}_ndcg_at_10"] <= 1.0, row
        assert len(evaluation["ndcg_at_10_by_source"][row]) == 5, row  # Fin-Eva's five context files

    tables = (out / "tables.md").read_text(encoding="utf-8")
    for heading in TABLES:
        assert f"\n{heading}\n" in tables, heading
    assert "(n=2)" in tables  # the sentiment rows are means over the two seeds
    for row in ["TF-IDF + logistic regression", "chance: majority class", "general, untrained (fresh head)",
                "| finetuned_general+bm25 |", "| chance |", "| TF-IDF / LSA |", "| RetroMAE |"]:
        assert row in tables, row
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert report.index("## Results") < report.index("## Runs")
    assert (out / "report" / "report.html").exists()

    # A rerun finds every stage finished and only rebuilds the report.
    again = run_script(out, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already finished") == len(RUNS)
