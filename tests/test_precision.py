"""`--bf16 auto|true|false`: the resolution on each kind of hardware, its record, and bf16's accuracy where native."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conftest import DEMO_DIR
from finbert2 import precision
from finbert2.errors import ConfigError


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU reports the given native-bf16 flags (no CUDA); lets auto resolve."""
    import torch

    monkeypatch.delenv(precision.DISABLE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def set_flags(*flags):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: list(flags))

    return set_flags


def test_auto_turns_bf16_on_only_where_the_cpu_has_it(cpu_flags):
    cpu_flags("amx_bf16", "avx512_bf16")
    amx = precision.resolve_bf16("auto")
    assert amx.bf16 and "amx_bf16, avx512_bf16" in amx.reason and amx.requested == "auto"
    cpu_flags()
    avx2 = precision.resolve_bf16("auto")
    assert not avx2.bf16 and "emulated" in avx2.reason
    assert "fp32" in avx2.message and "--bf16 auto" in avx2.message


def test_explicit_choices_win_and_bad_values_are_errors(cpu_flags, caplog):
    cpu_flags("amx_bf16")
    assert not precision.resolve_bf16("false").bf16 and not precision.resolve_bf16(False).bf16
    cpu_flags()
    with caplog.at_level(logging.WARNING, logger="finbert2"):
        forced = precision.resolve_bf16("True")
    assert forced.bf16 and forced.requested == "true" and "emulated" in caplog.text
    with pytest.raises(ConfigError, match="--bf16 must be one of auto, true, false; got 'fast'"):
        precision.resolve_bf16("fast")


def test_disable_env_keeps_auto_at_fp32(cpu_flags, monkeypatch):
    cpu_flags("amx_bf16")
    monkeypatch.setenv(precision.DISABLE_ENV, "1")
    resolved = precision.resolve_bf16("auto")
    assert not resolved.bf16 and precision.DISABLE_ENV in resolved.reason
    assert precision.resolve_bf16("true").bf16  # an explicit request is still honoured


def test_training_arguments_resolve_auto_and_the_run_record_keeps_why(cpu_flags, tmp_path):
    from finbert2.config import parse_args
    from finbert2.run import write_run_config

    cpu_flags()
    (training_args,) = parse_args([precision.PrecisionTrainingArguments],
                                  ["--output_dir", str(tmp_path), "--use_cpu", "True"])
    assert training_args.bf16 is False and training_args.precision.requested == "auto"
    cpu_flags("amx_bf16")
    (training_args,) = parse_args([precision.PrecisionTrainingArguments],
                                  ["--output_dir", str(tmp_path), "--use_cpu", "True", "--bf16", "auto"])
    assert training_args.bf16 is True  # what the Trainer reads: a plain bool
    write_run_config(tmp_path, training_args, stage="test")
    record = json.loads((tmp_path / "run_config.json").read_text(encoding="utf-8"))
    assert record["precision"] == {"requested": "auto", "bf16": True,
                                   "reason": "CPU has amx_bf16 (native bf16 matmul)"}
    assert "bf16" not in record["changed_arguments"]  # auto was the default, whatever it resolved to
    (forced,) = parse_args([precision.PrecisionTrainingArguments],
                           ["--output_dir", str(tmp_path), "--use_cpu", "True", "--bf16", "false"])
    assert "bf16" in write_run_config(tmp_path, forced, stage="test")["changed_arguments"]


def test_auto_bf16_on_a_cpu_only_host_needs_no_use_cpu_flag(cpu_flags, tmp_path):
    """The Trainer rejects bf16 without a GPU unless use_cpu is set; auto must not make the user say it."""
    from finbert2.config import parse_args

    cpu_flags("amx_bf16")
    (training_args,) = parse_args([precision.PrecisionTrainingArguments], ["--output_dir", str(tmp_path)])
    assert training_args.bf16 is True and training_args.use_cpu is True
    assert training_args.device.type == "cpu"
    cpu_flags()
    (fp32,) = parse_args([precision.PrecisionTrainingArguments], ["--output_dir", str(tmp_path)])
    assert fp32.bf16 is False and fp32.use_cpu is False  # left alone where bf16 stays off


def test_a_training_command_runs_under_bf16_without_use_cpu(run_cli, tiny_bert_dir, tmp_path):
    """End to end: 2 MLM steps with --bf16 true and no --use_cpu (emulated where the CPU lacks bf16)."""
    out = tmp_path / "mlm"
    result = run_cli("mlm", "--model_name_or_path", tiny_bert_dir, "--train_data", DEMO_DIR / "corpus.jsonl",
                     "--max_seq_length", "32", "--max_train_samples", "16", "--per_device_train_batch_size", "8",
                     "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
                     "--bf16", "true", "--output_dir", out)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert record["precision"]["bf16"] is True and record["arguments"]["use_cpu"] is True


def test_a_command_records_its_resolution(cpu_flags, tmp_path, run_cli, tiny_bert_dir):
    """`retrieve evaluate` at its default --bf16 auto on a CPU without native bf16: fp32, and why."""
    data = DEMO_DIR / "retrieval" / "eval"
    out = tmp_path / "eval"
    result = run_cli("retrieve", "evaluate", "--eval_data", str(data), "--models", str(tiny_bert_dir),
                     "--max_length", "32", "--output_dir", str(out), env={precision.DISABLE_ENV: "1"})
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert record["arguments"]["bf16"] == "auto"
    assert record["precision"]["bf16"] is False and precision.DISABLE_ENV in record["precision"]["reason"]
    assert "precision: fp32 (--bf16 auto" in (out / "run.log").read_text(encoding="utf-8")


native = pytest.mark.skipif(not precision.cpu_bf16_flags(),
                            reason="this CPU has neither AMX nor AVX512-BF16: auto stays fp32 here, nothing to compare")


def _demo_texts(*names):
    return [json.loads(line)["text"] for name in names
            for line in (DEMO_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@native
def test_native_bf16_embeddings_match_fp32(e5_pruned_dir):
    from finbert2.retrieve.encoder import DenseEncoder

    texts = _demo_texts("corpus.jsonl")[:400]
    fp32 = DenseEncoder.from_pretrained(str(e5_pruned_dir), max_length=128, bf16=False).encode_passages(texts)
    bf16 = DenseEncoder.from_pretrained(str(e5_pruned_dir), max_length=128, bf16=True).encode_passages(texts)
    cosine = np.sum(fp32 * bf16, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cosine.min() >= 0.999, f"lowest cosine {cosine.min():.5f}"


@native
def test_native_bf16_classifier_labels_match_fp32(e5_pruned_dir):
    """An e5 classifier whose head is fitted (logistic regression on fp32 features of the demo training set)
    labels >= 99.5% of the 900 demo sentiment texts the same under bf16 autocast as in fp32."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finbert2.classify.inference import SequenceClassifier
    from finbert2.classify.longtext import LongTextSettings

    rows = [json.loads(line) for line in (DEMO_DIR / "sentiment" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = sorted({r["label"] for r in rows})
    tokenizer = AutoTokenizer.from_pretrained(str(e5_pruned_dir))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(e5_pruned_dir), num_labels=len(labels)).eval()
    with torch.inference_mode():
        batch = tokenizer([r["text"] for r in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
        pooled = model.bert(**batch).pooler_output.numpy()
    head = LogisticRegression(max_iter=2000).fit(pooled, [labels.index(r["label"]) for r in rows])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(head.coef_).float())
        model.classifier.bias.copy_(torch.from_numpy(head.intercept_).float())
    texts = _demo_texts("sentiment/validation.jsonl", "sentiment/test.jsonl", "sentiment/train.jsonl")
    settings = LongTextSettings(max_length=128)
    fp32 = SequenceClassifier(model, tokenizer, settings, bf16=False).predict(texts).predicted()
    bf16 = SequenceClassifier(model, tokenizer, settings, bf16=True).predict(texts).predicted()
    agreement = float(np.mean(fp32 == bf16))
    assert len(set(fp32.tolist())) == len(labels)  # a real classifier, not one label everywhere
    assert agreement >= 0.995, f"labels equal on {agreement:.2%}"
