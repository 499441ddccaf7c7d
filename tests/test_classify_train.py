"""Fin-Labeler end to end on tiny models: train, honest selection, reload, predict, resume, multi-label, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finbert2.classify import cli as classify_cli
from finbert2.cli import run_main
from finbert2.training import read_loss_log
from tests.conftest import DEMO_DIR, REPO_ROOT

SENTIMENT = DEMO_DIR / "sentiment"
TINY_MODEL = ["--tokenizer_name", str(DEMO_DIR / "tokenizer"), "--tiny_hidden_size", "64",
              "--tiny_num_hidden_layers", "2", "--tiny_num_attention_heads", "2", "--tiny_intermediate_size", "128",
              "--tiny_max_position_embeddings", "128"]
FAST = ["--max_length", "64", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
        "--learning_rate", "3e-3", "--warmup_steps", "0.1", "--eval_strategy", "steps", "--save_strategy", "steps",
        "--load_best_model_at_end", "True", "--metric_for_best_model", "macro_f1", "--logging_steps", "2",
        "--report_to", "none", "--seed", "7"]
SUMMARY_KEYS = ["accuracy", "macro_f1", "weighted_f1"]


def classify(*argv: str) -> int:
    return run_main(classify_cli.main, [str(a) for a in argv])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classify") / "run"
    code = classify("train", "--train_data", SENTIMENT / "train.jsonl", "--eval_data", SENTIMENT / "validation.jsonl",
                    "--test_data", SENTIMENT / "test.jsonl", "--output_dir", out, *TINY_MODEL, *FAST,
                    "--max_steps", "120", "--eval_steps", "60", "--save_steps", "60", "--truncation", "head_tail")
    assert code == 0
    return out


def test_training_writes_every_metric_and_lowers_the_loss(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text(encoding="utf-8"))
    for split in ("eval", "test"):
        for key in SUMMARY_KEYS:
            assert 0.0 <= metrics[f"{split}_{key}"] <= 1.0, f"{split}_{key}"
    assert metrics["train_steps"] == 120 and metrics["train_rows"] == 600 and metrics["eval_rows"] == 150
    losses = [value for _, value in read_loss_log(demo_run / "loss_log.csv")["loss"]]
    assert len(losses) >= 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1  # ln(3) = 1.10 at the start
    assert metrics["test_macro_f1"] > metrics["test_majority_macro_f1"] + 0.3  # learnt far beyond chance
    for name in ("loss.png", "run_config.json", "run.log", "classification_report_eval.json",
                 "classification_report_test.json", "confusion_matrix_test.json", "confusion_matrix_test.png",
                 "confusion_matrix_eval.png", "predictions_test.jsonl", "model.safetensors", "tokenizer.json"):
        assert (demo_run / name).is_file(), name
    report = json.loads((demo_run / "classification_report_test.json").read_text(encoding="utf-8"))
    assert sorted(row["label"] for row in report["per_class"]) == ["中性", "消极", "积极"]
    assert sum(row["support"] for row in report["per_class"]) == 150
    matrix = json.loads((demo_run / "confusion_matrix_test.json").read_text(encoding="utf-8"))["matrix"]
    assert np.trace(matrix) / 150 == pytest.approx(metrics["test_accuracy"])


def test_model_is_selected_on_validation_only(demo_run):
    """The kept model is the checkpoint with the best validation macro-F1 the Trainer saw; test played no part."""
    metrics = json.loads((demo_run / "metrics.json").read_text(encoding="utf-8"))
    state = json.loads((demo_run / "checkpoint-120" / "trainer_state.json").read_text(encoding="utf-8"))
    evals = [entry for entry in state["log_history"] if "eval_macro_f1" in entry]
    assert [e["step"] for e in evals] == [60, 120]
    best = max(evals, key=lambda e: e["eval_macro_f1"])
    assert state["best_metric"] == pytest.approx(best["eval_macro_f1"])
    assert metrics["best_checkpoint_step"] == best["step"] and metrics["kept"] == "fine-tuned"
    assert metrics["eval_macro_f1"] == pytest.approx(best["eval_macro_f1"], abs=1e-6)
    assert not any(key.startswith("test_") for e in state["log_history"] for key in e)


@pytest.mark.parametrize("keep_start", [True, False])
def test_a_start_that_beats_every_checkpoint_is_kept(tmp_path, keep_start):
    """A probe head whose fine-tuning is wrecked (Adam at lr 1.0): with --keep_start_if_better the validation-chosen
    model is the start itself (its predictions, hence its macro-F1, recomputed from the restored weights); without
    it the wrecked checkpoint ships."""
    out = tmp_path / "run"
    code = classify("train", "--train_data", SENTIMENT / "train.jsonl", "--eval_data", SENTIMENT / "validation.jsonl",
                    "--output_dir", out, *TINY_MODEL, *FAST, "--head_init", "probe", "--learning_rate", "1.0",
                    "--warmup_steps", "0", "--max_steps", "6", "--eval_steps", "3", "--save_steps", "3",
                    "--keep_start_if_better", str(keep_start))
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text(encoding="utf-8"))
    assert metrics["initial_eval_macro_f1"] > state["best_metric"] + 0.1  # the probe start beats every checkpoint
    if keep_start:
        assert metrics["kept"] == "start" and "best_checkpoint_step" not in metrics
        assert metrics["eval_macro_f1"] == pytest.approx(metrics["initial_eval_macro_f1"], abs=1e-9)
    else:
        assert metrics["kept"] == "fine-tuned" and metrics["best_checkpoint_step"] in (3, 6)
        assert metrics["eval_macro_f1"] == pytest.approx(state["best_metric"], abs=1e-6)


def test_saved_model_reloads_with_auto_class_and_gives_equal_outputs(demo_run):
    model = AutoModelForSequenceClassification.from_pretrained(demo_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(demo_run)
    assert model.config.id2label == {0: "中性", 1: "消极", 2: "积极"}
    assert model.config.label2id == {"中性": 0, "消极": 1, "积极": 2}
    # texts within the 64-token limit, where every long-text strategy is the plain tokenizer call
    rows = [row for row in read_jsonl(demo_run / "predictions_test.jsonl")
            if len(tokenizer(row["text"])["input_ids"]) <= 64][:30]
    assert len(rows) == 30
    texts = [row["text"] for row in rows]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(**batch).logits, dim=-1).numpy()
    expected = np.array([[row["probabilities"][name] for name in ("中性", "消极", "积极")] for row in rows])
    np.testing.assert_allclose(probabilities, expected, atol=2e-6)
    assert [model.config.id2label[i] for i in probabilities.argmax(1)] == [row["prediction"] for row in rows]


def test_predict_reproduces_the_labels_evaluation_scored(demo_run, tmp_path):
    out = tmp_path / "pred.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "Fin-labeler" / "sequence_inference.py"), "--model_name_or_path", demo_run,
         "--input_file", SENTIMENT / "test.jsonl", "--output_file", out, "--label_field", "label",
         "--batch_size", "7"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "texts/s" in proc.stderr
    predicted = read_jsonl(out)
    scored = read_jsonl(demo_run / "predictions_test.jsonl")
    assert [p["prediction"] for p in predicted] == [s["prediction"] for s in scored]
    assert [p["label"] for p in predicted] == [s["label"] for s in scored]  # input fields kept
    metrics = json.loads((demo_run / "metrics.json").read_text(encoding="utf-8"))
    assert f"accuracy {metrics['test_accuracy']:.4f}" in proc.stderr
    # CSV in, CSV out, with [CLS] vectors
    csv_in = tmp_path / "in.csv"
    with csv_in.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([[i, row["text"]] for i, row in enumerate(scored[:5])])
    csv_out = tmp_path / "out.csv"
    assert classify("predict", "--model_name_or_path", demo_run, "--input_file", csv_in, "--output_file", csv_out,
                    "--return_cls", "True") == 0
    rows = list(csv.DictReader(csv_out.open(encoding="utf-8")))
    assert [r["prediction"] for r in rows] == [s["prediction"] for s in scored[:5]]
    assert len(json.loads(rows[0]["cls"])) == 64
    assert {f"prob_{n}" for n in ("中性", "消极", "积极")} <= set(rows[0])


def test_training_resumes_from_the_last_checkpoint(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(line + "\n" for line in (SENTIMENT / "train.jsonl").read_text(encoding="utf-8")
                             .splitlines()[:120]), encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--train_data", train, "--output_dir", out, *TINY_MODEL, *FAST, "--eval_steps", "3",
            "--save_steps", "3"]
    assert classify(*args, "--max_steps", "3") == 0
    first = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert first["train_steps"] == 3 and first["eval_rows"] == 12  # 10% carved (stratified) from train
    assert classify(*args, "--max_steps", "6") == 2  # a finished run is not overwritten silently
    (out / "metrics.json").unlink()  # as if killed after checkpoint-3
    assert classify(*args, "--max_steps", "6") == 0
    assert "resuming from" in (out / "run.log").read_text(encoding="utf-8")
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["train_steps"] == 6
    config = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert config["validation_carved_from_train"] is True


def _multilabel_rows(path: Path, limit: int) -> list[dict]:
    rows = []
    for row in read_jsonl(path)[:limit]:
        labels = [name for name, words in (("业绩", ("利润", "营收", "业绩")), ("风险", ("下降", "下滑", "亏损", "调查")),
                                           ("评级", ("评级", "买入", "增持"))) if any(w in row["text"] for w in words)]
        rows.append({"text": row["text"], "label": labels})
    return rows


def test_multilabel_with_class_weighting_and_tuned_threshold(tmp_path):
    for split, limit in (("train", 300), ("validation", 60), ("test", 60)):
        rows = _multilabel_rows(SENTIMENT / f"{split}.jsonl", limit)
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
    out = tmp_path / "run"
    assert classify("train", "--train_data", tmp_path / "train.jsonl", "--eval_data", tmp_path / "validation.jsonl",
                    "--test_data", tmp_path / "test.jsonl", "--output_dir", out, *TINY_MODEL, *FAST,
                    "--max_steps", "20", "--eval_steps", "10", "--save_steps", "10", "--class_weighting", "True",
                    "--truncation", "chunk", "--max_length", "32", "--chunk_overlap", "8") == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert {f"test_{k}" for k in SUMMARY_KEYS} <= set(metrics) and 0.05 <= metrics["threshold"] <= 0.95
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["problem_type"] == "multi_label_classification"
    assert config["finbert2_classify"]["threshold"] == metrics["threshold"]
    assert config["finbert2_classify"]["long_text"]["truncation"] == "chunk"
    predictions = read_jsonl(out / "predictions_test.jsonl")
    assert all(isinstance(p["prediction"], list) for p in predictions)
    for p in predictions:  # the stored threshold decides the labels
        assert p["prediction"] == [n for n, prob in p["probabilities"].items() if prob >= metrics["threshold"]]
    cm = json.loads((out / "confusion_matrix_test.json").read_text(encoding="utf-8"))
    assert cm["multi_label"] and set(cm["per_label"]) == {"业绩", "风险", "评级"}


def test_baseline_on_demo_beats_the_majority_class(tmp_path):
    out = tmp_path / "baseline"
    assert classify("baseline", REPO_ROOT / "configs" / "classify" / "tiny.yaml", "--output_dir", out,
                    "--c_values", "1.0", "10.0") == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for split in ("eval", "test"):
        for key in SUMMARY_KEYS:
            assert f"{split}_{key}" in metrics
    assert metrics["c"] in (1.0, 10.0)
    assert metrics["test_macro_f1"] > metrics["test_majority_macro_f1"] + 0.3
    assert (out / "confusion_matrix_test.png").is_file() and (out / "predictions_test.jsonl").is_file()


# ---- bad input: one line naming the file (and line), exit 2, nothing that looks finished


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_label_in_evaluation_data(tmp_path, capsys):
    bad = _write(tmp_path / "dev.jsonl", '{"text": "公司利润增长", "label": "积极"}\n{"text": "公司亏损", "label": "利空"}\n')
    out = tmp_path / "run"
    assert classify("train", "--train_data", SENTIMENT / "train.jsonl", "--eval_data", bad, "--output_dir", out,
                    *TINY_MODEL) == 2
    err = capsys.readouterr().err
    assert "label '利空' does not occur in the training labels" in err and str(bad) in err
    assert not out.exists()


def test_label_outside_the_declared_label_list(tmp_path, capsys):
    assert classify("train", "--train_data", SENTIMENT / "train.jsonl", "--label_list", "积极", "消极",
                    "--output_dir", tmp_path / "run", *TINY_MODEL) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:" in err and "label '中性' is not in the declared label set ['消极', '积极']" in err


def test_missing_text_column(tmp_path, capsys, demo_run):
    bad = _write(tmp_path / "train.csv", "content,label\n公司利润增长,积极\n")
    assert classify("train", "--train_data", bad, "--output_dir", tmp_path / "run", *TINY_MODEL) == 2
    assert f"{bad}:2: missing field 'text'" in capsys.readouterr().err
    assert classify("predict", "--model_name_or_path", demo_run, "--input_file", bad,
                    "--output_file", tmp_path / "p.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: no text field/column 'text' (found: content, label)" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_empty_input_file(tmp_path, capsys, demo_run):
    empty = _write(tmp_path / "empty.jsonl", "")
    assert classify("train", "--train_data", empty, "--output_dir", tmp_path / "run", *TINY_MODEL) == 2
    assert f"{empty}: file is empty" in capsys.readouterr().err
    assert classify("predict", "--model_name_or_path", demo_run, "--input_file", empty,
                    "--output_file", tmp_path / "p.jsonl") == 2
    assert f"{empty}: file is empty" in capsys.readouterr().err


def test_predict_rejects_labels_the_model_does_not_know(tmp_path, capsys, demo_run):
    other = _write(tmp_path / "sc2.jsonl", '{"text": "公司利润增长", "label": 1}\n')
    assert classify("predict", "--model_name_or_path", demo_run, "--input_file", other, "--label_field", "label",
                    "--output_file", tmp_path / "p.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{other}:1: label '1' is not in the declared label set" in err
