"""Fin-Labeler metrics against hand-computed values (single-label, multi-label), reports and loss helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finbert2.classify.data import class_weights, pool_by_owner, split_rows
from finbert2.classify.metrics import (
    confusion,
    majority_macro_f1,
    per_class_table,
    summary_metrics,
    write_split_report,
)
from finbert2.classify.train import make_weighted_loss, tune_threshold


def test_multiclass_metrics_match_hand_computation():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # class 0: tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2          (support 2)
    # class 1: tp 2, fp 1, fn 1 -> P 2/3, R 2/3, F1 2/3          (support 3)
    # class 2: tp 0, fp 1, fn 1 -> P 0,   R 0,   F1 0            (support 1)
    metrics = summary_metrics(y_true, y_pred, 3)
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert metrics["weighted_f1"] == pytest.approx((2 * 1 / 2 + 3 * 2 / 3 + 1 * 0) / 6)
    assert metrics["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert metrics["macro_recall"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    table = per_class_table(y_true, y_pred, ["a", "b", "c"])
    assert [row["support"] for row in table] == [2, 3, 1]
    assert table[1]["precision"] == pytest.approx(2 / 3) and table[1]["recall"] == pytest.approx(2 / 3)
    assert table[2]["f1"] == 0.0
    assert confusion(y_true, y_pred, ["a", "b", "c"])["matrix"] == [[1, 1, 0], [0, 2, 1], [1, 0, 0]]


def test_binary_metrics_and_a_class_never_predicted():
    y_true = [1, 1, 1, 0]
    y_pred = [1, 1, 1, 1]
    # class 0: never predicted -> P 0 (zero_division), R 0, F1 0; class 1: P 3/4, R 1, F1 6/7
    metrics = summary_metrics(y_true, y_pred, 2)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["macro_f1"] == pytest.approx((0 + 6 / 7) / 2)
    assert metrics["weighted_f1"] == pytest.approx((1 * 0 + 3 * 6 / 7) / 4)
    assert majority_macro_f1(y_true, 2) == pytest.approx(metrics["macro_f1"])
    # a label that never occurs still has its row and column
    assert confusion([0, 0], [0, 0], ["x", "y", "z"])["matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_multilabel_metrics_match_hand_computation():
    y_true = np.array([[1, 0], [1, 1], [0, 1], [0, 1]])
    y_pred = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    # label 0: tp 2, fp 1, fn 0 -> P 2/3, R 1,   F1 4/5 (support 2)
    # label 1: tp 1, fp 0, fn 2 -> P 1,   R 1/3, F1 1/2 (support 3)
    # subset accuracy: only row 0 is entirely right -> 1/4
    metrics = summary_metrics(y_true, y_pred, 2)
    assert metrics["accuracy"] == pytest.approx(0.25)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5) / 2)
    assert metrics["weighted_f1"] == pytest.approx((2 * 0.8 + 3 * 0.5) / 5)
    assert metrics["macro_precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["macro_recall"] == pytest.approx((1 + 1 / 3) / 2)
    cm = confusion(y_true, y_pred, ["p", "q"])
    assert cm["per_label"] == {"p": [[1, 1], [0, 2]], "q": [[1, 0], [2, 1]]}
    table = per_class_table(y_true, y_pred, ["p", "q"])
    assert [row["support"] for row in table] == [2, 3]


def test_split_report_files(tmp_path):
    out = write_split_report(tmp_path, "test", [0, 1, 1], [0, 1, 0], ["积极", "消极"])
    assert set(out) == {"test_accuracy", "test_macro_f1", "test_weighted_f1", "test_macro_precision",
                        "test_macro_recall"}
    report = json.loads((tmp_path / "classification_report_test.json").read_text(encoding="utf-8"))
    assert [row["label"] for row in report["per_class"]] == ["积极", "消极"]
    cm = json.loads((tmp_path / "confusion_matrix_test.json").read_text(encoding="utf-8"))
    assert cm["matrix"] == [[1, 0], [1, 1]]
    assert (tmp_path / "confusion_matrix_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_split_report(tmp_path, "ml", np.array([[1, 0], [0, 1]]), np.array([[1, 1], [0, 1]]), ["a", "b"])
    assert (tmp_path / "confusion_matrix_ml.png").stat().st_size > 0


def test_pool_by_owner_averages_windows():
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 1.0]], dtype=np.float32)
    pooled = pool_by_owner(logits, np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(pooled, [[3.0, 7 / 3], [0.0, 1.0]], rtol=1e-6)


def test_class_weights_and_weighted_loss():
    targets = np.array([0, 0, 0, 1])
    weights = class_weights(targets, 2, multi_label=False)
    np.testing.assert_allclose(weights.numpy(), [4 / (2 * 3), 4 / (2 * 1)])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    loss = make_weighted_loss(weights, multi_label=False)({"logits": logits}, labels)
    per_row = -torch.log_softmax(logits, dim=-1)[torch.arange(2), labels]
    expected = (weights[0] * per_row[0] + weights[1] * per_row[1]) / (weights[0] + weights[1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    ml_targets = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
    pos_weight = class_weights(ml_targets, 2, multi_label=True)
    np.testing.assert_allclose(pos_weight.numpy(), [1 / 3, 3 / 1])


def test_tune_threshold_picks_the_best_validation_cut():
    probabilities = np.array([[0.3, 0.9], [0.2, 0.1], [0.35, 0.6]])
    targets = np.array([[1, 1], [0, 0], [1, 1]])
    threshold, score = tune_threshold(probabilities, targets, 2)
    assert 0.2 < threshold <= 0.3 and score == 1.0


def test_split_rows_is_stratified_and_disjoint():
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(40)]
    parts = split_rows(rows, {"test": 0.2, "validation": 0.1}, seed=1)
    assert {len(p) for p in parts.values()} == {8, 4, 28}
    texts = [r["text"] for p in parts.values() for r in p]
    assert sorted(texts) == sorted(r["text"] for r in rows)
    assert sum(r["label"] == "b" for r in parts["test"]) == 2  # 10 of 40 are "b": a fifth of them
