"""The contrastive loss, gradient caching and cross-device negatives of the retriever."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
from torch.nn import functional as F

from finbert2.retrieve.modeling import BiEncoder, contrastive_loss, grad_cache_step


def test_contrastive_loss_matches_hand_computation():
    # 2 queries, group size 2: passages [q0 pos, q0 neg, q1 pos, q1 neg] on the unit circle.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    t = 0.5
    # query 0 scores: [1, 0, 0, 1]/t, target 0; query 1 scores: [0, 1, 1, 0]/t, target 2
    s0 = [2.0, 0.0, 0.0, 2.0]
    expected0 = -(2.0 - math.log(sum(math.exp(x) for x in s0)))
    expected = (expected0 + expected0) / 2  # query 1 is the mirror image
    assert contrastive_loss(q, p, t).item() == pytest.approx(expected, rel=1e-6)


def test_in_batch_negatives_count():
    # A query's loss must see the other queries' passages: moving only q1's negative changes q0's loss.
    torch.manual_seed(0)
    q = F.normalize(torch.randn(2, 8), dim=-1)
    p = F.normalize(torch.randn(4, 8), dim=-1)
    scores = q @ p.T / 0.1
    per_query = F.cross_entropy(scores, torch.tensor([0, 2]), reduction="none")
    p2 = p.clone()
    p2[3] = q[0]  # q1's hard negative now looks like q0's positive
    per_query2 = F.cross_entropy(q @ p2.T / 0.1, torch.tensor([0, 2]), reduction="none")
    assert per_query2[0] > per_query[0]


def _tiny_bi_encoder(tiny_bert_dir, **kwargs):
    from finbert2.retrieve.encoder import load_encoder_model

    return BiEncoder(load_encoder_model(str(tiny_bert_dir)), **kwargs)


def _batch(tokenizer, n_queries=6, group=3):
    queries = [f"为这个句子生成表示以用于检索相关文章：公司{i}的营业收入是多少" for i in range(n_queries)]
    passages = [f"公司{i}发布公告，第{j}季度营业收入{i * 7 + j}亿元，同比增长{j}%。" * (1 + j % 2)
                for i in range(n_queries) for j in range(group)]
    tok = lambda texts: dict(tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False))
    return tok(queries), tok(passages)


def test_grad_cache_replays_dropout(tiny_bert_dir):
    """With dropout on, the cached gradients equal those of the plain loss over the same forward passes
    (same chunks, same RNG): the second pass must replay the first pass's dropout masks exactly."""
    from transformers import AutoTokenizer

    from finbert2.retrieve.modeling import _chunks

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    query, passage = _batch(tokenizer)
    model = _tiny_bi_encoder(tiny_bert_dir, temperature=0.05)
    model.train()

    torch.manual_seed(123)
    q_emb = torch.cat([model(features=c)["embeddings"] for c in _chunks(query, 4)])
    p_emb = torch.cat([model(features=c)["embeddings"] for c in _chunks(passage, 4)])
    plain = model.loss(q_emb, p_emb)
    plain.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    torch.manual_seed(123)
    cached = grad_cache_step(model, query, passage, chunk_size=4, loss_fn=model.loss)
    cached_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert cached.item() == pytest.approx(plain.item(), rel=1e-5)
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, cached_grads[name], atol=1e-6, rtol=1e-4), name


def test_grad_cache_matches_plain_loss(tiny_bert_dir):
    """Dropout off: any chunking gives the gradients of the plain full-batch loss (times the GA scale)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    query, passage = _batch(tokenizer, n_queries=5, group=2)
    model = _tiny_bi_encoder(tiny_bert_dir, temperature=0.02)
    model.eval()
    plain = model(query=query, passage=passage)["loss"]
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    for chunk in (1, 3, 100):
        model.zero_grad()
        grad_cache_step(model, query, passage, chunk_size=chunk, loss_fn=model.loss, scale=0.5)
        for g_plain, p in zip(plain_grads, model.parameters()):
            assert torch.allclose(0.5 * g_plain, p.grad, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# cross-device negatives: a 2-process gloo group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cross_device_worker(rank, world, port, q_all, p_all, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = q_all.size(0) // world
        g = p_all.size(0) // q_all.size(0)
        q = q_all[rank * b:(rank + 1) * b].clone().requires_grad_()
        p = p_all[rank * b * g:(rank + 1) * b * g].clone().requires_grad_()
        local_only = contrastive_loss(q, p, 0.1, cross_device=False)
        loss = contrastive_loss(q, p, 0.1, cross_device=True)
        loss.backward()
        results[rank] = (loss.item(), local_only.item(), q.grad.clone(), p.grad.clone())
    finally:
        dist.destroy_process_group()


def test_cross_device_negatives_use_both_ranks_passages():
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    world, b, g, d = 2, 3, 2, 8
    q_all = F.normalize(torch.randn(world * b, d), dim=-1)
    p_all = F.normalize(torch.randn(world * b * g, d), dim=-1)
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_cross_device_worker, args=(world, _free_port(), q_all, p_all, results), nprocs=world, join=True)

    # Every rank's loss is the loss of the whole (2-rank) batch ...
    q_ref = q_all.clone().requires_grad_()
    p_ref = p_all.clone().requires_grad_()
    full = contrastive_loss(q_ref, p_ref, 0.1)
    (full * world).backward()  # DDP averages the ranks' gradients; each rank holds the sum's share
    for rank in range(world):
        loss, local_only, q_grad, p_grad = results[rank]
        assert loss == pytest.approx(full.item(), rel=1e-5)
        assert loss != pytest.approx(local_only, rel=1e-3)  # ... not the loss of its own passages only
        # ... and each rank's passages get the gradient of both ranks' queries (sum over ranks).
        assert torch.allclose(q_grad, q_ref.grad[rank * b:(rank + 1) * b], atol=1e-6)
        assert torch.allclose(p_grad, p_ref.grad[rank * b * g:(rank + 1) * b * g], atol=1e-6)


def test_chance_level_warning_names_the_chance_loss():
    from finbert2.guards import chance_loss_collapse as chance_level_warning

    chance = math.log(48)  # 3.871: 16 queries x 3 passages, every one scored alike
    message = chance_level_warning(3.8715, 48)
    assert message is not None and "ln(48) = 3.871" in message
    assert chance_level_warning(chance * 1.05, 48) is not None  # above chance: still nothing learned
    assert chance_level_warning(chance * 0.97, 48) is None  # learning has begun
    assert chance_level_warning(2.5, 48) is None and chance_level_warning(None, 48) is None
