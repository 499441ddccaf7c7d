"""The classifier reads the pooling its encoder was trained with, and can start its head from a linear probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finbert2.classify import cli as classify_cli
from finbert2.classify.inference import CONFIG_KEY, SequenceClassifier
from finbert2.classify.longtext import LongTextSettings
from finbert2.classify.pooling import (
    BertForMeanPooledSequenceClassification,
    default_pooling,
    fit_probe,
    probe_logits,
    set_head_from_probe,
)
from tests.conftest import DEMO_DIR

TEXTS = ["公司三季度净利润同比增长35%，超出市场预期。", "央行宣布下调存款准备金率0.5个百分点。",
         "受原材料价格上涨影响，毛利率下滑。", "短句"]


def test_mean_pooling_equals_the_encoders_own_mean_vector(e5_pruned_dir):
    from transformers import AutoTokenizer

    from finbert2.retrieve.encoder import DenseEncoder

    assert default_pooling(str(e5_pruned_dir)) == "mean"  # e5 as converted: a mean-pooling sentence-transformers folder
    model = BertForMeanPooledSequenceClassification.from_pretrained(e5_pruned_dir, num_labels=3)
    setattr(model.config, CONFIG_KEY, {"pooling": "mean"})
    tokenizer = AutoTokenizer.from_pretrained(e5_pruned_dir)
    classifier = SequenceClassifier(model, tokenizer, LongTextSettings(max_length=64), device="cpu")
    vectors = classifier.predict(TEXTS, batch_size=2, return_cls=True).cls
    encoder = DenseEncoder.from_pretrained(str(e5_pruned_dir), pooling="mean", normalize=False, max_length=64,
                                           device="cpu")
    expected = encoder.encode(TEXTS, prompt="")
    assert np.allclose(vectors, expected, atol=1e-4), np.abs(vectors - expected).max()
    # the logits are the classifier layer applied to exactly that vector
    logits = classifier.predict(TEXTS, batch_size=2).logits
    head = model.classifier
    assert np.allclose(logits, expected @ head.weight.detach().numpy().T + head.bias.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("num_labels,multi_label", [(2, False), (3, False), (3, True)])
def test_probe_weights_reproduce_the_probes_decisions(num_labels, multi_label):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8)).astype(np.float32)
    if multi_label:
        targets = (rng.random((60, num_labels)) < 0.5).astype(int)
    else:
        targets = np.arange(60) % num_labels
    probe = fit_probe(features, targets, num_labels, multi_label, c=1.0, seed=0)
    logits = probe_logits(probe, features, num_labels, multi_label)
    if multi_label:
        assert np.array_equal(logits > 0, probe.predict(features).astype(bool))
    else:
        assert np.array_equal(logits.argmax(1), probe.predict(features))
        assert np.allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), probe.predict_proba(features), atol=1e-5)
    layer = torch.nn.Module()
    layer.classifier = torch.nn.Linear(8, num_labels)
    set_head_from_probe(layer, probe, num_labels, multi_label)
    assert np.allclose(layer.classifier(torch.from_numpy(features)).detach().numpy(), logits, atol=1e-5)


def _train(model_dir, out, *extra):
    return classify_cli.main([
        "train", "--model_name_or_path", str(model_dir), "--train_data", str(DEMO_DIR / "sentiment" / "train.jsonl"),
        "--eval_data", str(DEMO_DIR / "sentiment" / "validation.jsonl"), "--max_length", "48",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "32", "--learning_rate", "1e-4",
        "--eval_strategy", "epoch", "--save_strategy", "epoch", "--logging_steps", "5", "--use_cpu", "True",
        "--seed", "0", "--report_to", "none", "--disable_tqdm", "True", "--output_dir", str(out), *extra])


def test_probe_initialised_mean_classifier_trains_saves_and_reloads(tiny_e5_shaped_dir, tmp_path):
    """The first validation score of a probe-initialised head is the probe's own; the saved folder records its
    pooling and reloads (predict) to the same predictions the training run wrote."""
    out = tmp_path / "clf"
    assert _train(tiny_e5_shaped_dir, out, "--head_init", "probe") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pooling"] == "mean" and metrics["head_init"] == "probe"  # mean: read from the e5-shaped folder
    assert metrics["initial_eval_macro_f1"] == pytest.approx(metrics["probe_eval_macro_f1"], abs=1e-12)
    assert metrics["initial_eval_macro_f1"] > metrics["eval_majority_macro_f1"]  # the probe learned something
    config = json.loads((out / "config.json").read_text())
    assert config[CONFIG_KEY]["pooling"] == "mean"
    reloaded = SequenceClassifier.from_pretrained(str(out), device="cpu")
    assert isinstance(reloaded.model, BertForMeanPooledSequenceClassification)
    rows = [json.loads(line) for line in (out / "predictions_eval.jsonl").read_text().splitlines()]
    predicted = reloaded.predict([r["text"] for r in rows]).labels()
    assert predicted == [r["prediction"] for r in rows]


def test_pooling_and_head_init_are_checked(tiny_e5_shaped_dir, tmp_path, capsys):
    from finbert2.cli import main

    base = ["classify", "train", "--model_name_or_path", str(tiny_e5_shaped_dir),
            "--train_data", str(DEMO_DIR / "sentiment" / "train.jsonl")]
    assert main([*base, "--pooling", "max", "--output_dir", str(tmp_path / "a")]) == 2
    assert "pooling must be cls or mean, got 'max'" in capsys.readouterr().err
    assert main([*base, "--head_init", "lp", "--output_dir", str(tmp_path / "b")]) == 2
    assert "head_init must be random or probe, got 'lp'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_probe_scores_the_test_split_as_the_lp_row(tiny_e5_shaped_dir, tmp_path):
    """With test_data the probe alone is scored on test too (the LP row): at learning rate 0 fine-tuning leaves the
    probe head as it is, so the run's own test score is the probe's."""
    out = tmp_path / "lp"
    assert _train(tiny_e5_shaped_dir, out, "--head_init", "probe", "--learning_rate", "0",
                  "--test_data", str(DEMO_DIR / "sentiment" / "test.jsonl")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["probe_test_macro_f1"] == pytest.approx(metrics["test_macro_f1"], abs=1e-12)
    assert metrics["probe_test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-12)
    assert metrics["probe_eval_macro_f1"] == pytest.approx(metrics["eval_macro_f1"], abs=1e-12)


def test_frozen_features_are_cached_by_encoder_weights_and_token_ids(tmp_path, monkeypatch):
    """The probe's frozen features come back from the cache for the same encoder and ids whatever the head (another
    seed's), are recomputed when the encoder's weights or the ids differ, and equal a fresh computation."""
    from transformers import BertConfig

    from finbert2.classify import pooling

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    model = BertForMeanPooledSequenceClassification(config)
    ids = [[2, 5, 7, 3], [2, 9, 3], [2, 11, 12, 13, 14, 3]]
    calls = []
    real = pooling.classifier_inputs
    monkeypatch.setattr(pooling, "classifier_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "features"

    first = pooling.cached_classifier_inputs(model, ids, 0, 2, cache, pooling.encoder_digest(model))
    assert len(calls) == 1 and len(list(cache.glob("*.npy"))) == 1
    with torch.no_grad():
        model.classifier.weight.normal_()  # another seed's head: the features (its inputs) are the same
    again = pooling.cached_classifier_inputs(model, ids, 0, 2, cache, pooling.encoder_digest(model))
    assert len(calls) == 1 and np.array_equal(first, again)
    assert np.allclose(first, real(model, ids, 0, 2), atol=1e-6)

    pooling.cached_classifier_inputs(model, ids[:2], 0, 2, cache, pooling.encoder_digest(model))  # other ids
    assert len(calls) == 2
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[5].add_(torch.randn(16))  # another encoder (token 5: first text)
    changed = pooling.cached_classifier_inputs(model, ids, 0, 2, cache, pooling.encoder_digest(model))
    assert len(calls) == 3 and not np.allclose(changed, first)
    assert [p.suffix for p in cache.iterdir()] == [".npy"] * 3  # three keys stored, no staging file left
