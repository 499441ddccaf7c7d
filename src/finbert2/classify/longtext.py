"""Fitting a text of any length into model inputs of at most ``max_length`` tokens.

Texts are tokenised once without special tokens; each strategy then picks token windows and wraps
each in ``[CLS] ... [SEP]``:

- ``head``: the first ``max_length - 2`` tokens (what ``truncation=True`` does);
- ``head_tail``: the first ``head_fraction`` of the budget plus the last tokens (Sun et al., 2019,
  "How to Fine-Tune BERT for Text Classification": 128 head + 382 tail was best on long news);
- ``chunk``: consecutive windows with ``chunk_overlap`` shared tokens, at most ``max_chunks``; a
  text's logits are the mean of its windows' logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from finbert2.errors import ConfigError


@dataclass(frozen=True)
class LongTextSettings:
    max_length: int = 512
    truncation: str = "head_tail"
    head_fraction: float = 0.25
    chunk_overlap: int = 64
    max_chunks: int = 8

    def __post_init__(self):
        if self.max_length < 3:
            raise ConfigError(f"max_length {self.max_length} leaves no room for text between [CLS] and [SEP]")
        if self.truncation == "chunk" and not 0 <= self.chunk_overlap < self.budget:
            raise ConfigError(f"chunk_overlap {self.chunk_overlap} must be in [0, max_length - 2 = {self.budget})")

    @property
    def budget(self) -> int:
        """Content tokens per input: ``max_length`` minus [CLS] and [SEP]."""
        return self.max_length - 2

    def to_dict(self) -> dict:
        return {"max_length": self.max_length, "truncation": self.truncation, "head_fraction": self.head_fraction,
                "chunk_overlap": self.chunk_overlap, "max_chunks": self.max_chunks}


def head_tail(ids: Sequence[int], budget: int, head_fraction: float) -> list[int]:
    if len(ids) <= budget:
        return list(ids)
    n_head = int(round(budget * head_fraction))
    n_tail = budget - n_head
    return list(ids[:n_head]) + (list(ids[-n_tail:]) if n_tail else [])


def chunks(ids: Sequence[int], budget: int, overlap: int, max_chunks: int) -> list[list[int]]:
    if len(ids) <= budget:
        return [list(ids)]
    stride = budget - overlap
    if stride < 1:
        raise ConfigError(f"chunk overlap {overlap} must be smaller than the window of {budget} tokens")
    windows = []
    for start in range(0, len(ids), stride):
        windows.append(list(ids[start:start + budget]))
        if start + budget >= len(ids) or len(windows) == max_chunks:
            break
    return windows


def windows_for(ids: Sequence[int], settings: LongTextSettings) -> list[list[int]]:
    """The content windows (without special tokens) one text becomes under ``settings``."""
    if settings.truncation == "head":
        return [list(ids[: settings.budget])]
    if settings.truncation == "head_tail":
        return [head_tail(ids, settings.budget, settings.head_fraction)]
    if settings.truncation == "chunk":
        return chunks(ids, settings.budget, settings.chunk_overlap, settings.max_chunks)
    raise ConfigError(f"unknown truncation strategy '{settings.truncation}'")


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        raise ConfigError("the tokenizer has no [CLS]/[SEP] (or BOS/EOS) tokens to wrap inputs with")
    return cls_id, sep_id


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                 settings: LongTextSettings) -> tuple[list[list[int]], list[int], list[int]]:
    """Model inputs for ``texts``: ``(input_ids per window, text index per window, full token count per text)``.

    Windows of one text are consecutive. The tokenizer runs on all texts at once (the fast
    tokenizer parallelises in Rust) without truncation, so every strategy sees the whole text.
    """
    cls_id, sep_id = special_ids(tokenizer)
    # Long texts are expected here; the "longer than model_max_length" warning would be noise.
    verbose = getattr(tokenizer, "verbose", None)
    try:
        if verbose is not None:
            tokenizer.verbose = False
        encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    finally:
        if verbose is not None:
            tokenizer.verbose = verbose
    input_ids: list[list[int]] = []
    owners: list[int] = []
    lengths: list[int] = []
    for index, ids in enumerate(encoded):
        lengths.append(len(ids))
        for window in windows_for(ids, settings):
            input_ids.append([cls_id, *window, sep_id])
            owners.append(index)
    return input_ids, owners, lengths
