"""The cross-encoder: an ``AutoModelForSequenceClassification`` with one logit per (query, passage) pair.

``CrossEncoderScorer`` scores pairs the way ``sentence_transformers.CrossEncoder(folder).predict`` does
(the tokenizer's pair encoding, ``truncation=True``, sigmoid of the logit), but runs the pairs sorted by
length in batches bounded by padded tokens, so the short passages of a top-K do not pad to the
longest one. ``listwise_loss`` is the training objective: softmax cross-entropy of each group's
positive against its hard negatives (bge-reranker's loss).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
import torch.nn.functional as F

from finbert2.errors import ConfigError
from finbert2.retrieve.encoder import CPU_BATCH_TOKENS, pad_batch, token_budget_batches

logger = logging.getLogger("finbert2.rerank")

# Below this standard deviation of the logits over a sample of training pairs the scores no longer
# separate anything: every pair gets (nearly) one score, the collapse of a cross-encoder.
COLLAPSE_SCORE_STD = 1e-3


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Mean over groups of ``-log softmax(scores)[positive]``; ``scores`` is (groups, passages) with the
    positive in column 0."""
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (groups, passages), got {tuple(scores.shape)}")
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), targets)


def score_collapse(logits: np.ndarray, threshold: float = COLLAPSE_SCORE_STD) -> tuple[float, str | None]:
    """``(standard deviation of the logits, reason or None)`` over a sample of pairs."""
    spread = float(np.std(np.asarray(logits, dtype=np.float64))) if len(logits) > 1 else float("nan")
    if np.isfinite(spread) and spread < threshold:
        return spread, (f"score collapse: the reranker's logits over {len(logits)} training pairs have standard "
                        f"deviation {spread:.2e} (< {threshold}): it gives every pair the same score")
    return spread, None


def pair_token_types(rows: list[list[int]], sep_id: int | None) -> torch.Tensor:
    """BERT's segment ids of padded pair rows: 0 up to and including the first [SEP], 1 after it
    (what the tokenizer returns for a pair; padding gets 0, as there)."""
    width = max(len(r) for r in rows)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        if sep_id in row:
            types[r, row.index(sep_id) + 1:len(row)] = 1
    return types


class CrossEncoderScorer:
    """Scores (query, passage) pairs with a sequence-classification model of one logit."""

    def __init__(self, model, tokenizer, max_length: int | None = None, batch_tokens: int | None = CPU_BATCH_TOKENS,
                 bf16: bool = False, device: str | torch.device = "cpu"):
        labels = getattr(model.config, "num_labels", 1)
        if labels != 1:
            raise ConfigError(f"a reranker has one output logit; this model has {labels} (a classifier?)")
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.device = torch.device(device)
        positions = getattr(model.config, "max_position_embeddings", 512)
        self.max_length = min(max_length or min(tokenizer.model_max_length or 512, 512), positions)
        self.batch_tokens = batch_tokens
        self.bf16 = bf16
        # BERT-style models read segment ids; RoBERTa/XLM-R-style tokenizers have none.
        self.token_types = "token_type_ids" in tokenizer.model_input_names

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "fp32", **kwargs) -> "CrossEncoderScorer":
        """A reranker folder or hub id at ``dtype`` fp32, bf16 (autocast) or int8 (dynamic quantisation); or a
        ``finbert2 export`` folder (ONNX / OpenVINO), which runs at the precision it was exported and checked at."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from finbert2.export.runtime import exported_backend, load_exported
        from finbert2.modeling import check_weights_format, from_pretrained_quietly
        from finbert2.serve.models import apply_dtype

        exported = exported_backend(name_or_path) != "torch"
        if not exported:
            check_weights_format(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            if exported:
                model = load_exported(name_or_path)
            else:
                torch.manual_seed(0)  # an encoder folder (the zero-shot row) gets a new head: the same one each time
                model = from_pretrained_quietly(AutoModelForSequenceClassification, name_or_path, use_safetensors=True,
                                                num_labels=1)
        except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: a head of other shape (a classifier)
            raise ConfigError(f"{name_or_path}: cannot load a reranker ({str(err).splitlines()[0]})") from None
        model, bf16 = apply_dtype(model, dtype)
        return cls(model, tokenizer, bf16=bf16 or kwargs.pop("bf16", False), **kwargs)

    def pair_rows(self, queries: list[str], passages: list[str], truncate: bool = True) -> list[list[int]]:
        """Token ids of each (query, passage) pair, special tokens included; cut to ``max_length`` when
        ``truncate`` (as ``CrossEncoder`` does: the longer side first)."""
        return self.tokenizer(queries, passages, truncation=truncate, max_length=self.max_length if truncate else None,
                              return_attention_mask=False, return_token_type_ids=False, verbose=False)["input_ids"]

    @torch.inference_mode()
    def logits(self, rows: list[list[int]]) -> np.ndarray:
        """One logit per row, in the rows' order; rows run longest first in token-budget batches."""
        out = np.zeros(len(rows), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id or 0
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        for batch in token_budget_batches([len(r) for r in rows], self.batch_tokens):
            chunk = [rows[i] for i in batch]
            input_ids, attention_mask = pad_batch(chunk, pad_id)
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
            if self.token_types:
                inputs["token_type_ids"] = pair_token_types(chunk, self.tokenizer.sep_token_id).to(self.device)
            with autocast:
                logits = self.model(**inputs).logits[:, 0]
            out[batch] = logits.float().cpu().numpy()
        return out

    def score(self, query: str, passages: list[str], raw: bool = False) -> np.ndarray:
        """Each passage's score for ``query``: sigmoid of the logit (``CrossEncoder.predict``'s default), or
        the logit itself with ``raw``."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        logits = self.logits(self.pair_rows([query] * len(passages), passages))
        return logits if raw else sigmoid(logits)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)
