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
import hashlib
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


def false_negative_mask(query_ids: torch.Tensor, passage_ids: torch.Tensor,
                        positive_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, B*G)`` bool: the columns that must not count as negatives of each query.

    Column ``j`` is another copy of query ``i``'s positive (the same text, from another group or
    among its own hard negatives), or the positive of another row with the same query text (Fin-Eva
    has rows that share a templated question): treating those as negatives punishes the right
    answer. With ``positive_ids`` ``(B, P)`` (every positive of each row's query text, padded with -1),
    any column holding one of them is masked too: a context that answers several questions, or a hard
    negative of another row that is a positive of this one. The query's own target column is never
    masked. Ids are text hashes (``text_ids``), so this also works across ranks.
    """
    batch, columns = query_ids.numel(), passage_ids.numel()
    group_size = columns // batch
    targets = torch.arange(batch, device=passage_ids.device) * group_size
    same_positive = passage_ids[None, :] == passage_ids[targets][:, None]
    is_positive_column = torch.zeros(columns, dtype=torch.bool, device=passage_ids.device)
    is_positive_column[targets] = True
    same_query = query_ids[:, None] == query_ids[None, :]  # (B, B): row k asks the same as row i
    positive_of_same_query = torch.zeros(batch, columns, dtype=torch.bool, device=passage_ids.device)
    positive_of_same_query[:, targets] = same_query
    mask = same_positive | (positive_of_same_query & is_positive_column[None, :])
    if positive_ids is not None:
        mask |= (passage_ids[None, :, None] == positive_ids[:, None, :]).any(-1)
    mask[torch.arange(batch), targets] = False
    return mask


def contrastive_loss(q_emb: torch.Tensor, p_emb: torch.Tensor, temperature: float,
                     cross_device: bool = False, query_ids: torch.Tensor | None = None,
                     passage_ids: torch.Tensor | None = None,
                     positive_ids: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of queries ``(B, d)`` against passages ``(B*G, d)`` grouped by query; with text ids,
    in-batch false negatives (``false_negative_mask``) are left out of the softmax."""
    if cross_device:
        q_emb, p_emb = gather_across_ranks(q_emb), gather_across_ranks(p_emb)
        if query_ids is not None and passage_ids is not None:
            query_ids, passage_ids = gather_ids(query_ids), gather_ids(passage_ids)
            positive_ids = gather_ids(positive_ids) if positive_ids is not None else None
    group_size = p_emb.size(0) // q_emb.size(0)
    scores = q_emb @ p_emb.T / temperature
    if query_ids is not None and passage_ids is not None:
        positive_ids = positive_ids.to(scores.device) if positive_ids is not None else None
        scores = scores.masked_fill(false_negative_mask(query_ids.to(scores.device), passage_ids.to(scores.device),
                                                        positive_ids), torch.finfo(scores.dtype).min)
    target = torch.arange(q_emb.size(0), device=scores.device) * group_size
    return F.cross_entropy(scores, target)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Concatenate an id tensor from every rank (no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def text_ids(texts: list[str]) -> torch.Tensor:
    """A stable 63-bit id per text (identical texts, identical ids, on every rank and run)."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
                         >> 1 for t in texts], dtype=torch.long)


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

    def loss(self, q_emb: torch.Tensor, p_emb: torch.Tensor, query_ids: torch.Tensor | None = None,
             passage_ids: torch.Tensor | None = None, positive_ids: torch.Tensor | None = None) -> torch.Tensor:
        cross_device = self.negatives_cross_device and self.training
        world = dist.get_world_size() if cross_device and dist.is_available() and dist.is_initialized() else 1
        self.passages_scored = p_emb.size(0) * world
        return contrastive_loss(q_emb.float(), p_emb.float(), self.temperature, cross_device=cross_device,
                                query_ids=query_ids, passage_ids=passage_ids, positive_ids=positive_ids)

    def forward(self, query: dict | None = None, passage: dict | None = None,
                features: dict | None = None, query_ids: torch.Tensor | None = None,
                passage_ids: torch.Tensor | None = None,
                positive_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``query`` + ``passage`` -> ``{"loss"}``; ``features`` alone -> ``{"embeddings"}`` (grad caching)."""
        if features is not None:
            return {"embeddings": self.embed(**features)}
        q_emb, p_emb = self.embed(**query), self.embed(**passage)
        return {"loss": self.loss(q_emb, p_emb, query_ids, passage_ids, positive_ids), "q_emb": q_emb,
                "p_emb": p_emb}

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
    rng_states = []  # replay dropout exactly in the second pass, on the CPU and every accelerator
    with torch.no_grad():
        q_parts, p_parts = [], []
        for chunk, parts in [(c, q_parts) for c in q_chunks] + [(c, p_parts) for c in p_chunks]:
            rng_states.append(RngState())
            parts.append(model(features=chunk)["embeddings"])
    q_emb = torch.cat(q_parts).detach().requires_grad_()
    p_emb = torch.cat(p_parts).detach().requires_grad_()
    loss = loss_fn(q_emb, p_emb)
    (loss * scale).backward()
    grads = list(q_emb.grad.split([len(p) for p in q_parts])) + list(p_emb.grad.split([len(p) for p in p_parts]))
    chunks = q_chunks + p_chunks
    saved_state = RngState()
    for index, (chunk, grad, state) in enumerate(zip(chunks, grads, rng_states)):
        last = index == len(chunks) - 1
        state.restore()
        context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with context:
            emb = model(features=chunk)["embeddings"]
            # d(sum(emb * grad))/d(theta) = grad^T d(emb)/d(theta): the chain rule through the cache.
            backward(torch.dot(emb.flatten().float(), grad.flatten()))
    saved_state.restore()
    return loss.detach()


def _accelerator_rng_modules() -> list:
    """The torch device modules with their own RNG that are in use (CUDA, XPU, MPS)."""
    modules = []
    for name in ("cuda", "xpu", "mps"):
        module = getattr(torch, name, None)
        if module is not None and getattr(module, "is_available", lambda: False)():
            modules.append(module)
    return modules


class RngState:
    """The RNG state of the CPU and of every accelerator, captured now and restorable later.

    Dropout on a GPU draws from the GPU's generator, not the CPU's: replaying only
    ``torch.get_rng_state()`` gives the re-forward of gradient caching other dropout masks, and
    its gradients are then not those of the plain loss.
    """

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.devices = []
        for module in _accelerator_rng_modules():
            if hasattr(module, "get_rng_state_all"):
                self.devices.append((module, module.get_rng_state_all(), True))
            else:
                self.devices.append((module, module.get_rng_state(), False))

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for module, state, per_device in self.devices:
            if per_device:
                module.set_rng_state_all(state)
            else:
                module.set_rng_state(state)
