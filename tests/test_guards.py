"""Collapse checks: hand-computed values, a deliberately collapsed encoder, a trained one, the report."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from finbert2.guards import chance_loss_collapse, embedding_collapse, mean_pairwise_cosine, prediction_collapse
from tests.conftest import DEMO_DIR
from tests.test_retrieve_train import _small_eval_folder, _train_args


def test_mean_pairwise_cosine_by_hand():
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # pairs: (0,1) 0, (0,2) 1/sqrt2, (1,2) 1/sqrt2
    assert mean_pairwise_cosine(vectors) == pytest.approx(2 / math.sqrt(2) / 3)
    assert mean_pairwise_cosine(np.ones((5, 3))) == pytest.approx(1.0)
    assert math.isnan(mean_pairwise_cosine(np.ones((1, 3))))


def test_prediction_and_chance_loss_checks():
    assert "predicts '积极' for all 4" in prediction_collapse(np.array([1, 1, 1, 1]), ["中性", "积极", "消极"])
    assert prediction_collapse(np.array([0, 1, 1, 1]), ["中性", "积极"]) is None
    assert "ln(48) = 3.871" in chance_loss_collapse(3.87, 48)
    assert chance_loss_collapse(2.0, 48) is None


@pytest.fixture(scope="module")
def collapsed_bert(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT with its last LayerNorm's weight zeroed: every token state is the same bias vector."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        norm = model.bert.encoder.layer[-1].output.LayerNorm
        norm.weight.zero_()
        norm.bias.copy_(torch.linspace(-1, 1, norm.bias.numel()))
    folder = tmp_path_factory.mktemp("collapsed") / "bert"
    model.save_pretrained(folder)
    shutil.copy(tiny_bert_dir / "tokenizer.json", folder)
    shutil.copy(tiny_bert_dir / "tokenizer_config.json", folder)
    return folder


def test_collapse_check_fires_on_a_collapsed_encoder_and_not_on_e5(collapsed_bert, e5_pruned_dir):
    from finbert2.data import read_corpus
    from finbert2.retrieve import DenseEncoder

    passages = read_corpus(DEMO_DIR / "corpus.jsonl")[:64]
    cosine, reason = embedding_collapse(DenseEncoder.from_pretrained(str(collapsed_bert)).encode_passages(passages))
    assert cosine > 0.999 and "embedding collapse" in reason
    cosine, reason = embedding_collapse(DenseEncoder.from_pretrained(str(e5_pruned_dir)).encode_passages(passages))
    assert reason is None and cosine < 0.95  # measured 0.885: e5 vectors are anisotropic, not collapsed


def test_collapsed_retriever_run_says_so_in_metrics_log_and_report(collapsed_bert, tiny_bert_dir, tmp_path):
    from finbert2.report.builder import build_report
    from finbert2.retrieve.cli import main

    collapsed, healthy = tmp_path / "collapsed", tmp_path / "healthy"
    eval_dir = _small_eval_folder(tmp_path, n_queries=10)
    short = {"max_steps": 6, "eval_steps": 6, "save_steps": 6}
    assert main(["train", *_train_args(collapsed_bert, collapsed, eval_dir, learning_rate=1e-9, **short)]) == 0
    # 12 steps: after 6 the healthy run's last loss sat within 2% of chance on some runs (a flaky margin)
    assert main(["train", *_train_args(tiny_bert_dir, healthy, eval_dir, pooling="mean", max_steps=12, eval_steps=6,
                                       save_steps=6)]) == 0
    bad = json.loads((collapsed / "metrics.json").read_text())
    good = json.loads((healthy / "metrics.json").read_text())
    assert bad["collapsed"] is True and "embedding collapse" in bad["collapse_reason"]
    assert "chance-level loss" in bad["collapse_reason"]
    assert "WARNING" in (collapsed / "run.log").read_text() and "embedding collapse" in (collapsed / "run.log").read_text()
    assert good["collapsed"] is False and good["passage_mean_cosine"] < 0.99
    build_report([collapsed, healthy], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    first_warning = markdown.index("WARNING")
    assert first_warning < markdown.index("### collapsed") and "collapsed: collapsed (embedding collapse" in markdown
    assert '<p class="warning"><b>WARNING</b> collapsed: collapsed' in html and ".warning{color:#c00" in html
    assert "healthy: collapsed" not in markdown


def test_classifier_predicting_one_class_is_flagged(tmp_path):
    from finbert2.classify.cli import main

    out = tmp_path / "prior"
    argv = ["train", "configs/classify/tiny.yaml", "--output_dir", str(out), "--max_steps", "2",
            "--learning_rate", "1e-9", "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "2",
            "--save_steps", "2", "--tiny_num_hidden_layers", "1", "--tiny_hidden_size", "64",
            "--tiny_num_attention_heads", "1", "--tiny_intermediate_size", "64"]
    import os

    cwd = os.getcwd()
    os.chdir(DEMO_DIR.parents[1])
    try:
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = {json.loads(l)["prediction"] for l in (out / "predictions_eval.jsonl").read_text().splitlines()}
    assert (len(predictions) == 1) == metrics["collapsed"]
    if metrics["collapsed"]:
        assert "prediction collapse" in metrics["collapse_reason"]
