"""The fused vocabulary cross-entropy against autograd's linear -> float -> cross_entropy path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finbert2.losses import linear_cross_entropy


def leaves(seed: int, rows: int = 37, hidden: int = 16, vocab: int = 301, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=generator, dtype=dtype, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=generator, dtype=dtype, requires_grad=True)
    b = torch.randn(vocab, generator=generator, dtype=dtype, requires_grad=True)
    t = torch.randint(0, vocab, (rows,), generator=generator)
    return h, w, b, t


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("block_bytes", [1, 4 * 301 * 5, 4 * 301 * 37, 1 << 30])  # 1 row, 5 (37 = 7*5+2), all, all
def test_loss_and_gradients_equal_the_autograd_path(block_bytes):
    h, w, b, t = leaves(0)
    reference = F.cross_entropy(F.linear(h, w, b), t)
    fused = linear_cross_entropy(h, w, b, t, block_bytes=block_bytes)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(grads(3.0 * fused, h, w, b), grads(3.0 * reference, h, w, b)):  # a scaled loss too
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_without_bias_and_with_a_weight_used_twice_as_a_tied_embedding_is():
    h, w, _, t = leaves(1)
    ids = torch.tensor([3, 5, 3])
    reference = F.cross_entropy(h @ w.t(), t) + w[ids].sum()
    fused = linear_cross_entropy(h, w, None, t) + w[ids].sum()
    torch.testing.assert_close(fused, reference)
    for ours, theirs in zip(grads(fused, h, w), grads(reference, h, w)):
        torch.testing.assert_close(ours, theirs)


def test_loss_by_hand():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    w = torch.eye(2, requires_grad=True)  # logits = h
    loss = linear_cross_entropy(h, w, None, torch.tensor([0, 0]))
    # rows: -log(e^1 / (e^1 + e^0)) and -log(e^0 / (e^0 + e^2))
    expected = (-torch.log(torch.tensor(1.0).exp() / (1 + torch.tensor(1.0).exp()))
                - torch.log(1 / (1 + torch.tensor(2.0).exp()))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bf16_autocast_matches_autocast_linear_within_bf16_rounding():
    h, w, b, t = leaves(2, rows=64, hidden=32, vocab=997, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.cross_entropy(F.linear(h, w, b).float(), t)
        fused = linear_cross_entropy(h, w, b, t, block_bytes=4 * 997 * 10)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference, rtol=2e-2, atol=2e-2)
    for ours, theirs in zip(grads(fused, h, w, b), grads(reference, h, w, b)):
        assert ours.dtype == theirs.dtype == torch.float32
        assert F.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.999


def test_shapes_are_checked():
    h, w, b, t = leaves(3)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(h, w, b, t[:-1])
