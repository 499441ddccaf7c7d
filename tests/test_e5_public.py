"""multilingual-e5-small fine-tuned on real financial data (../shared/data), a few CPU minutes each:
the retriever rises above its own zero-shot score on held-out Fin-Eva, the classifier clearly beats
the majority class on CFBenchmark sentiment. Thresholds come from measured runs (stated below)."""

from __future__ import annotations

import json

import pytest

from finbert2.classify import cli as classify_cli
from finbert2.converters import cfbenchmark_sentiment
from tests.conftest import require_public


@pytest.mark.slow
def test_e5_retriever_fine_tuned_on_fin_eva_beats_its_zero_shot(e5_pruned_dir, tmp_path):
    """Fine-tuned on Fin-Eva's grouped training rows (one per question text, every training context of it a
    positive), scored on the validation split (settings are chosen there; the test split is never read)."""
    from finbert2.converters.fin_eva import convert
    from finbert2.retrieve.cli import main

    convert(require_public("fin-eva"), tmp_path / "fe", validation_fraction=0.15)
    out = tmp_path / "retriever"
    assert main(["train", "--model_name_or_path", str(e5_pruned_dir), "--train_data", str(tmp_path / "fe" / "train.jsonl"),
                 "--output_dir", str(out), "--train_group_size", "2", "--passage_max_len", "128",
                 "--per_device_train_batch_size", "16", "--max_steps", "16", "--attention_dropout", "0",
                 "--learning_rate", "3e-5", "--temperature", "0.02", "--warmup_steps", "0.1", "--logging_steps", "2",
                 "--save_steps", "100", "--use_cpu", "True", "--seed", "42", "--report_to", "none",
                 "--disable_tqdm", "True", "--dataloader_num_workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["collapsed"] is False
    assert metrics["query_max_len"] == 128  # the longest training query (477 tokens) capped at the passages' limit
    assert main(["evaluate", "--eval_data", str(tmp_path / "fe" / "validation"), "--models", str(e5_pruned_dir),
                 str(out), "--labels", "zero_shot", "fine_tuned", "--max_length", "128",
                 "--output_dir", str(tmp_path / "ev")]) == 0
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # measured (2026-12-06, AVX2 CPU): zero-shot 0.6470, fine-tuned 0.6636 validation nDCG@10 after 16 steps of
    # 16 grouped queries (104 s); before grouping, on the test split, +0.009 (0.7026 -> 0.7117) under a +0.005 bar
    assert scores["fine_tuned_ndcg_at_10"] > scores["zero_shot_ndcg_at_10"] + 0.01


@pytest.mark.slow
def test_e5_classifier_on_cfbenchmark_sentiment_beats_the_majority_class(e5_pruned_dir, tmp_path):
    source = require_public("cfbenchmark-basic", "data", "sentiment.jsonl")
    data = tmp_path / "cfb"
    assert cfbenchmark_sentiment.main([str(source), str(data), "--test_fraction", "0.2", "--validation_fraction", "0.1",
                                       "--seed", "42"]) == 0
    out = tmp_path / "classifier"
    assert classify_cli.main(["train", "--model_name_or_path", str(e5_pruned_dir), "--train_data", str(data / "train.jsonl"),
                              "--eval_data", str(data / "validation.jsonl"), "--test_data", str(data / "test.jsonl"),
                              "--max_length", "96", "--num_train_epochs", "3", "--per_device_train_batch_size", "16",
                              "--learning_rate", "1e-4", "--warmup_steps", "0.1", "--eval_strategy", "epoch",
                              "--save_strategy", "epoch", "--load_best_model_at_end", "True",
                              "--metric_for_best_model", "macro_f1", "--logging_steps", "5", "--use_cpu", "True",
                              "--seed", "42", "--report_to", "none", "--disable_tqdm", "True",
                              "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # measured (2026-12-06, AVX2 CPU, 189 s): e5's own mean pooling (the default for its folder) gives test
    # macro-F1 0.550 against the majority class's 0.189, validation 0.627 against the untrained start's 0.304.
    # Through the [CLS] pooler (before pooling followed the encoder) the same run gave 0.353 / 0.454 from 0.187.
    assert metrics["pooling"] == "mean"
    assert metrics["collapsed"] is False
    assert metrics["eval_macro_f1"] > metrics["initial_eval_macro_f1"] + 0.25
    assert metrics["test_macro_f1"] > metrics["test_majority_macro_f1"] + 0.30
