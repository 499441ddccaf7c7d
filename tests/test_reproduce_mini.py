"""The mini reproduction (scripts/reproduce_mini.sh) end to end on the public data, at smoke size."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import REPO_ROOT, public_data_dir, require_public

# The smallest settings that still run every stage: a 2-layer hidden-64 BERT, a handful of steps.
SMOKE = {
    "HIDDEN": "64", "LAYERS": "2", "SEQ_LEN": "64", "MLM_STEPS": "4", "MLM_BATCH": "8", "RETROMAE_STEPS": "3",
    "CLS_EPOCHS": "1", "CLS_MAX_LENGTH": "64", "RET_STEPS": "4", "RET_BATCH": "4", "RET_PASSAGE_LEN": "64",
    "TOPIC_DOCS": "300", "TOPIC_MIN_CLUSTER": "10", "SCRATCH_VOCAB": "3000", "ADDED_WORDS": "200",
}
RUNS = ["data", "tokenizer", "mlm", "retromae",
        *(f"classify/{task}_{kind}" for task in ("cfb_sentiment", "sc2") for kind in ("pretrained", "random", "tfidf")),
        "retrieve/from_random", "retrieve/from_mlm", "retrieve/from_retromae", "retrieve/evaluation",
        "topics/retriever", "topics/tfidf"]
REPORT_SECTIONS = ["## data", "## tokenizer", "## mlm", "## retromae", "## classify train", "## classify baseline",
                   "## retrieve train", "## retrieve evaluate", "## topics"]
RETRIEVAL_ROWS = ["bm25", "finetuned_from_random", "finetuned_from_mlm", "finetuned_from_retromae",
                  "mlm_no_finetune", "retromae_no_finetune"]


def without_space(text):
    return re.sub(r"\s+", "", text)


def run_script(out, timeout=1800):
    env = {**os.environ, **SMOKE, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["sh", "scripts/reproduce_mini.sh", str(public_data_dir()), str(out)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_reproduce_mini_runs_every_stage_on_public_data(tmp_path):
    for folder in ("cfbenchmark-basic", "fin-eva", "finbert2-upstream", "jingewu-financial-sentiment-analysis"):
        require_public(folder)
    out = tmp_path / "mini"
    result = run_script(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for run in RUNS:
        metrics = json.loads((out / run / "metrics.json").read_text(encoding="utf-8"))
        assert metrics, run
    # The pretraining corpus left out every classification test text and held-out Fin-Eva context.
    data = json.loads((out / "data" / "metrics.json").read_text(encoding="utf-8"))
    corpus = [json.loads(line)["text"] for line in (out / "data" / "corpus.jsonl").open(encoding="utf-8")]
    assert data["corpus_documents"] == len(corpus) > 0
    corpus_keys = {without_space(text) for text in corpus}
    for test_file in ("cfb_sentiment/test.jsonl", "sc2/test.jsonl"):
        test_keys = {without_space(json.loads(line)["text"])
                     for line in (out / "data" / test_file).open(encoding="utf-8")}
        assert not corpus_keys & test_keys, test_file
    # Every model was scored on the same held-out Fin-Eva queries.
    evaluation = json.loads((out / "retrieve" / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    for row in RETRIEVAL_ROWS:
        assert 0.0 <= evaluation[f"{row}_ndcg_at_10"] <= 1.0, row
    for run in ("classify/sc2_pretrained", "classify/sc2_random", "classify/sc2_tfidf"):
        metrics = json.loads((out / run / "metrics.json").read_text(encoding="utf-8"))
        assert "test_macro_f1" in metrics, run

    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    for section in REPORT_SECTIONS:
        assert f"\n{section}\n" in report, section
    for row in RETRIEVAL_ROWS:
        assert f"| {row} |" in report, row
    assert (out / "report" / "report.html").exists()

    # A rerun finds every stage finished and only rebuilds the report.
    again = run_script(out, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already finished") == len(RUNS)
