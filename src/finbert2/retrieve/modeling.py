"""The bi-encoder and its InfoNCE loss: 1 positive + hard negatives + in-batch (and cross-device) negatives.

Each query ``i`` in a batch of ``B`` owns the passages ``[i*G, (i+1)*G)`` (its positive first, then
``G-1`` hard negatives). Its scores against all ``B*G`` passages, divided by the temperature, go
through a cross-entropy whose target is ``i*G``: every other query's passages are in-batch negatives.
With ``negatives_cross_device`` the passages (and queries) of every rank are gathered with a
differentiable all-gather, so the score matrix is ``(W*B) x (W*B*G)`` on every rank and the gradient
flows back to the rank that encoded each passage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from finbert2.retrieve.encoder import pool


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank in rank order, keeping the autograd graph.

    ``torch.distributed.nn.functional.all_gather`` sums the gradients of the gathered copies back
    onto the rank that produced them, so rank ``r``'s passages receive the gradient of every rank's
    loss (DDP then averages, giving the gradient of the mean loss over ranks).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def contrastive_loss(q_emb: torch.Tensor, p_emb: torch.Tensor, temperature: float,
                     cross_device: bool = False) -> torch.Tensor:
    """InfoNCE of queries ``(B, d)`` against passages ``(B*G, d)`` grouped by query."""
    if cross_device:
        q_emb, p_emb = gather_across_ranks(q_emb), gather_across_ranks(p_emb)
    group_size = p_emb.size(0) // q_emb.size(0)
    scores = q_emb @ p_emb.T / temperature
    target = torch.arange(q_emb.size(0), device=scores.device) * group_size
    return F.cross_entropy(scores, target)


class BiEncoder(nn.Module):
    """One shared encoder for queries and passages (upstream's setting), CLS-pooled and L2-normalised."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.02, pooling: str = "cls",
                 normalize: bool = True, negatives_cross_device: bool = False):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # Trainer reads model.config
        self.temperature = temperature
        self.pooling = pooling
        self.normalize = normalize
        self.negatives_cross_device = negatives_cross_device
        self.passages_scored = 0  # columns of the last score matrix: the positive + every negative a query saw

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **features) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **features).last_hidden_state
        emb = pool(states, attention_mask, self.pooling)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def loss(self, q_emb: torch.Tensor, p_emb: torch.Tensor) -> torch.Tensor:
        q_emb, p_emb = q_emb.float(), p_emb.float()
        if self.negatives_cross_device and self.training:
            q_emb, p_emb = gather_across_ranks(q_emb), gather_across_ranks(p_emb)
        self.passages_scored = p_emb.size(0)
        return contrastive_loss(q_emb, p_emb, self.temperature)

    def forward(self, query: dict | None = None, passage: dict | None = None,
                features: dict | None = None) -> dict[str, torch.Tensor]:
        """``query`` + ``passage`` -> ``{"loss"}``; ``features`` alone -> ``{"embeddings"}`` (grad caching)."""
        if features is not None:
            return {"embeddings": self.embed(**features)}
        q_emb, p_emb = self.embed(**query), self.embed(**passage)
        return {"loss": self.loss(q_emb, p_emb), "q_emb": q_emb, "p_emb": p_emb}

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)


def _chunks(features: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = next(iter(features.values())).size(0)
    return [{k: v[i:i + size] for k, v in features.items()} for i in range(0, n, size)]


def grad_cache_step(model: nn.Module, query: dict, passage: dict, chunk_size: int,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float = 1.0,
                    backward: Callable[[torch.Tensor], None] | None = None,
                    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None) -> torch.Tensor:
    """One contrastive step whose memory is bounded by ``chunk_size`` inputs (Gao et al., GradCache).

    1. Encode every chunk without a graph; 2. compute the full-batch loss on those embeddings (as
    leaves) and its gradient with respect to each embedding; 3. re-encode each chunk with a graph
    and backpropagate the cached embedding gradient through it. The parameter gradients equal those
    of the plain loss (dropout aside: use the same RNG state or eval mode to compare). ``model`` is
    called with ``features=`` and must return ``{"embeddings"}``; under DDP pass its ``no_sync`` so
    only the last chunk's backward all-reduces. Returns the (unscaled) loss, detached.
    """
    backward = backward or (lambda t: t.backward())
    q_chunks, p_chunks = _chunks(query, chunk_size), _chunks(passage, chunk_size)
    rng_states = []  # replay dropout exactly in the second pass
    with torch.no_grad():
        q_parts, p_parts = [], []
        for chunk, parts in [(c, q_parts) for c in q_chunks] + [(c, p_parts) for c in p_chunks]:
            rng_states.append(torch.get_rng_state())
            parts.append(model(features=chunk)["embeddings"])
    q_emb = torch.cat(q_parts).detach().requires_grad_()
    p_emb = torch.cat(p_parts).detach().requires_grad_()
    loss = loss_fn(q_emb, p_emb)
    (loss * scale).backward()
    grads = list(q_emb.grad.split([len(p) for p in q_parts])) + list(p_emb.grad.split([len(p) for p in p_parts]))
    chunks = q_chunks + p_chunks
    saved_state = torch.get_rng_state()
    for index, (chunk, grad, state) in enumerate(zip(chunks, grads, rng_states)):
        last = index == len(chunks) - 1
        torch.set_rng_state(state)
        context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with context:
            emb = model(features=chunk)["embeddings"]
            # d(sum(emb * grad))/d(theta) = grad^T d(emb)/d(theta): the chain rule through the cache.
            backward(torch.dot(emb.flatten().float(), grad.flatten()))
    torch.set_rng_state(saved_state)
    return loss.detach()
