"""The inference encoder: [CLS]-only last layer and token-sorted batches give the plain model's vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

from finbert2.retrieve import DenseEncoder
from finbert2.retrieve.encoder import ClsOnlyLastLayer, token_budget_batches

TEXTS = ["央行", "公司发布2023年年度报告，营业收入同比增长12.5%，净利润创历史新高。",
         "降准0.5个百分点释放长期资金约1万亿元", "债券", "基金经理表示看好新能源板块的中长期配置价值，维持增持评级。"]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_cls_only_last_layer_matches_the_full_model(tiny_bert_dir, attn_implementation):
    full = AutoModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False, attn_implementation=attn_implementation).eval()
    fast = AutoModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False, attn_implementation=attn_implementation).eval()
    keys = list(fast.state_dict())
    assert ClsOnlyLastLayer.fits(fast.encoder.layer[-1])
    fast.encoder.layer[-1] = ClsOnlyLastLayer(fast.encoder.layer[-1])
    assert list(fast.state_dict()) == keys  # same parameter names: save_pretrained is unchanged

    from transformers import AutoTokenizer

    features = AutoTokenizer.from_pretrained(tiny_bert_dir)(TEXTS, padding=True, return_tensors="pt")
    assert features["attention_mask"].min() == 0  # padded rows are part of the check
    with torch.inference_mode():
        expected = full(**features).last_hidden_state[:, 0]
        got = fast(**features).last_hidden_state
    assert got.shape == (len(TEXTS), 1, full.config.hidden_size)
    torch.testing.assert_close(got[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_encoder_vectors_keep_input_order_and_match_one_by_one(tiny_bert_dir):
    encoder = DenseEncoder.from_pretrained(str(tiny_bert_dir), batch_size=2, max_length=32)
    assert isinstance(encoder.model.encoder.layer[-1], ClsOnlyLastLayer)
    encoder.sort_chunk = 3  # several chunks, each sorted on its own
    batched = encoder.encode_passages(TEXTS)
    single = np.stack([encoder.encode_passages([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in batched}) == len(TEXTS)

    mean = DenseEncoder.from_pretrained(str(tiny_bert_dir), pooling="mean", batch_size=2, max_length=32)
    assert not isinstance(mean.model.encoder.layer[-1], ClsOnlyLastLayer)  # mean pooling needs every position
    assert mean.encode_passages(TEXTS).shape == batched.shape


def test_token_budget_batches_bound_padded_tokens_and_rows():
    lengths = [5, 3, 9, 1, 1, 1]
    # longest first: [9] alone (2 x 9 > 9), [5] alone (2 x 5 > 9), then 3 x 3 = 9 fits, a 4th row would pad to 12
    assert token_budget_batches(lengths, 9) == [[2], [0], [1, 3, 4], [5]]
    assert token_budget_batches(lengths, None, max_rows=2) == [[2, 0], [1, 3], [4, 5]]
    assert token_budget_batches(lengths, 10, max_rows=2) == [[2], [0, 1], [3, 4], [5]]
    assert token_budget_batches([700, 2], 512) == [[0], [1]]  # longer than the budget: alone, not dropped
    assert token_budget_batches([], 512) == []


def test_token_budget_batches_keep_short_rows_out_of_wide_batches():
    lengths = [10, 9, 4, 3, 1]
    assert token_budget_batches(lengths, None) == [[0, 1, 2, 3, 4]]  # 5 x 10 tokens for 27 real ones
    # min_fill 0.5: 4 < 0.5 x 10 opens a batch of width 4, and 1 < 0.5 x 4 one of width 1 (27 of 32 tokens real)
    assert token_budget_batches(lengths, None, min_fill=0.5) == [[0, 1], [2, 3], [4]]
    assert token_budget_batches(lengths, 20, min_fill=0.5) == [[0, 1], [2, 3], [4]]
    assert token_budget_batches(lengths, None, min_fill=1.0) == [[0], [1], [2], [3], [4]]  # equal lengths only


def test_encoder_batches_keep_to_the_token_budget_and_the_batch_size(tiny_bert_dir, monkeypatch):
    assert DenseEncoder.from_pretrained(str(tiny_bert_dir), device="cpu").max_batch_tokens == 2048  # the CPU default
    unbounded = DenseEncoder.from_pretrained(str(tiny_bert_dir), batch_size=4, max_length=32, max_batch_tokens=0)
    assert unbounded.max_batch_tokens is None
    encoder = DenseEncoder.from_pretrained(str(tiny_bert_dir), batch_size=4, max_length=32, max_batch_tokens=40)
    passes, pooled = [], encoder.pooled
    monkeypatch.setattr(encoder, "pooled", lambda rows: passes.append([len(r) for r in rows]) or pooled(rows))
    got = encoder.encode_passages(TEXTS)
    lengths = [len(ids) for ids in encoder.tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"]]
    assert sorted(n for p in passes for n in p) == sorted(lengths)  # every text once
    assert all(len(p) <= 4 and (len(p) == 1 or len(p) * max(p) <= 40) for p in passes)
    assert len(passes) > 2  # the budget cut, not only the 4 rows
    np.testing.assert_allclose(got, unbounded.encode_passages(TEXTS), atol=1e-5)
