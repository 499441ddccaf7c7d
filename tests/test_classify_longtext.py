"""Long-text strategies (head, head+tail, chunk-and-pool) on texts longer than the model limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from finbert2.classify.inference import CONFIG_KEY, SequenceClassifier
from finbert2.classify.longtext import LongTextSettings, chunks, encode_texts, head_tail, windows_for
from finbert2.retrieve.encoder import ClsOnlyLastLayer
from tests.conftest import DEMO_DIR

TOKENIZER_DIR = DEMO_DIR / "tokenizer"


def test_window_functions_on_token_ids():
    ids = list(range(100))
    assert head_tail(ids, 10, 0.3) == [0, 1, 2] + list(range(93, 100))
    assert head_tail(ids[:8], 10, 0.3) == ids[:8]
    assert chunks(ids, 40, 10, 8) == [ids[0:40], ids[30:70], ids[60:100]]
    assert chunks(ids, 40, 10, 2) == [ids[0:40], ids[30:70]]  # max_chunks caps the windows
    assert chunks(ids[:40], 40, 10, 8) == [ids[:40]]
    assert windows_for(ids, LongTextSettings(max_length=12, truncation="head")) == [ids[:10]]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def long_texts():
    rows = [json.loads(line) for line in (DEMO_DIR / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:60]]
    # Each text several times over the 64-token limit used below, plus one short text.
    return ["".join(r["text"] for r in rows[i:i + 6]) for i in range(0, 48, 6)] + ["公司业绩增长。"]


@pytest.mark.parametrize("strategy", ["head", "head_tail", "chunk"])
def test_encode_texts_longer_than_the_limit(tokenizer, long_texts, strategy):
    settings = LongTextSettings(max_length=64, truncation=strategy, head_fraction=0.25, chunk_overlap=8, max_chunks=50)
    input_ids, owners, lengths = encode_texts(tokenizer, long_texts, settings)
    full = tokenizer(long_texts, add_special_tokens=False)["input_ids"]
    assert lengths == [len(ids) for ids in full]
    assert all(n > 64 for n in lengths[:-1])
    assert all(len(ids) <= 64 for ids in input_ids)
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in input_ids)
    for text_index, ids in enumerate(full):
        windows = [input_ids[i][1:-1] for i in range(len(owners)) if owners[i] == text_index]
        if text_index == len(full) - 1:  # the short text passes unchanged
            assert windows == [ids]
        elif strategy == "head":
            assert windows == [ids[:62]]
        elif strategy == "head_tail":
            assert windows == [ids[:16] + ids[-46:]]  # round(62 * 0.25) = 16 head tokens
        else:
            stride = 62 - 8
            assert len(windows) == -(-(len(ids) - 8) // stride)  # ceil: windows to cover every token
            covered = [t for w in windows[:-1] for t in w[:stride]] + windows[-1]
            assert covered == ids  # every token is read, overlaps dropped
    assert owners == sorted(owners)


def tiny_classifier(tokenizer, settings: LongTextSettings, layers: int = 2) -> SequenceClassifier:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3,
                        id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2},
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForSequenceClassification(config)
    setattr(model.config, CONFIG_KEY, {"long_text": settings.to_dict(), "threshold": 0.5})
    return SequenceClassifier(model, tokenizer, device="cpu")


def model_logits(classifier, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return classifier.model(input_ids=torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("strategy", ["head", "head_tail", "chunk"])
def test_classifier_pools_exactly_the_strategy_windows(tokenizer, long_texts, strategy):
    settings = LongTextSettings(max_length=64, truncation=strategy, chunk_overlap=8, max_chunks=4)
    classifier = tiny_classifier(tokenizer, settings)
    result = classifier.predict(long_texts, batch_size=3, return_cls=True)
    assert result.logits.shape == (len(long_texts), 3) and result.cls.shape == (len(long_texts), 32)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    for i, text in enumerate(long_texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows = windows_for(ids, settings)
        if strategy == "chunk" and i < len(long_texts) - 1:
            assert len(windows) == 4  # capped by max_chunks
        expected = np.mean([model_logits(classifier, [cls_id, *w, sep_id]) for w in windows], axis=0)
        np.testing.assert_allclose(result.logits[i], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # length-sorted batching with padding gives the same answers as one text at a time
    one_by_one = classifier.predict(long_texts, batch_size=1)
    np.testing.assert_allclose(one_by_one.logits, result.logits, rtol=1e-4, atol=1e-5)
    assert result.labels() == one_by_one.labels()


def test_forward_passes_keep_to_the_token_budget_and_the_batch_size(tokenizer, long_texts, monkeypatch):
    classifier = tiny_classifier(tokenizer, LongTextSettings(max_length=64, truncation="chunk",
                                                                  chunk_overlap=8, max_chunks=4))
    expected = classifier.predict(long_texts, batch_size=1)
    passes, forward = [], classifier._forward
    monkeypatch.setattr(classifier, "_forward", lambda rows, *a: passes.append([len(r) for r in rows]) or forward(rows, *a))
    got = classifier.predict(long_texts, batch_size=5, max_batch_tokens=150)
    window_lengths = [len(w) for w in encode_texts(tokenizer, long_texts, classifier.settings)[0]]
    windows = len(window_lengths)
    assert sorted(n for p in passes for n in p) == sorted(window_lengths)  # every window once
    assert all(len(p) <= 5 and len(p) * max(p) <= 150 for p in passes)
    assert len(passes) == got.stats["forward_passes"] > -(-windows // 5)  # the budget, not only the rows, cut
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    # The CPU default bounds tokens; 0 lifts the bound (rows alone).
    assert classifier.predict(long_texts[:2]).stats["max_batch_tokens"] == 2048
    passes.clear()
    assert classifier.predict(long_texts, batch_size=5, max_batch_tokens=0).stats["max_batch_tokens"] is None
    assert len(passes) == -(-windows // 5)


@pytest.mark.parametrize("layers", [1, 2])
def test_loaded_classifier_runs_its_last_layer_at_cls_only_with_equal_outputs(tokenizer, long_texts, tmp_path, layers):
    settings = LongTextSettings(max_length=64, truncation="chunk", chunk_overlap=8, max_chunks=4)
    full = tiny_classifier(tokenizer, settings, layers)
    full.model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = SequenceClassifier.from_pretrained(str(tmp_path), device="cpu")
    # The head reads [CLS] alone; a 1-layer model keeps its layer (its hidden states would go unrecorded).
    assert isinstance(loaded.model.bert.encoder.layer[-1], ClsOnlyLastLayer) == (layers > 1)
    assert list(loaded.model.state_dict()) == list(full.model.state_dict())
    expected = full.predict(long_texts, batch_size=3, return_cls=True)  # padded, length-sorted batches
    got = loaded.predict(long_texts, batch_size=3, return_cls=True)
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.cls, expected.cls, rtol=1e-4, atol=1e-5)
    assert got.labels() == expected.labels()


def test_predict_rejects_a_negative_token_budget():
    from finbert2.classify.args import PredictArguments
    from finbert2.errors import ConfigError

    with pytest.raises(ConfigError, match="max_batch_tokens must be 0"):
        PredictArguments(model_name_or_path="model", input_file="in.jsonl", output_file="out.jsonl", max_batch_tokens=-1)
