"""Chinese whole-word masking: jieba word boundaries mapped onto tokens, masks drawn at batch time.

BERT's tokenizer splits Chinese into characters (or, with a domain vocab, into words and
characters), so masking tokens independently lets the model copy a masked character from its word
neighbours. Whole-word masking chooses *words* (jieba's segmentation) and masks all their tokens.

Each example carries ``input_ids`` and ``word_ids`` (the jieba word each token starts in; -1 for
special tokens). The collator draws the masks when it builds a batch, so every epoch sees new
ones. In training, ``EpochMaskedDataset`` draws each sequence's masks from a generator seeded by
(seed, epoch, index): a resumed run redraws exactly the masks the uninterrupted run would have,
whatever the data-loader workers or RNG restore order; the collator alone uses torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase


IGNORE_INDEX = -100  # label of positions without a prediction target (CrossEntropyLoss's ignore_index)


class JiebaWordSegmenter:
    """Character -> word index maps from jieba, with an optional user dictionary."""

    def __init__(self, user_dict: str | Path | None = None):
        from finbert2.segmentation import new_segmenter

        self._jieba = new_segmenter(user_dict)

    def char_to_word(self, text: str) -> list[int]:
        """For every character of ``text``, the index of the jieba word holding it."""
        owner = [0] * len(text)
        for index, (_, start, end) in enumerate(self._jieba.tokenize(text)):
            owner[start:end] = [index] * (end - start)
        return owner


def token_word_ids(char_owner: Sequence[int], offsets: Sequence[tuple[int, int]],
                   special_mask: Sequence[int] | None = None, word_offset: int = 0) -> list[int]:
    """The word of each token: the jieba word its first character belongs to (-1 for special tokens).

    A token spanning several jieba words (a domain word jieba cuts in two) counts as the first of
    them; the words it swallowed simply own no token.
    """
    words = []
    for i, (start, end) in enumerate(offsets):
        if (special_mask is not None and special_mask[i]) or end <= start:
            words.append(-1)
        else:
            words.append(char_owner[start] + word_offset)
    return words


@dataclass
class WholeWordMaskCollator:
    """Pads a batch and masks ``mlm_probability`` of its words: 80% [MASK], 10% random token, 10% kept.

    The number of words masked per sequence is ``n_words * mlm_probability`` rounded up or down at
    random (so the expected share is exact even for short sequences). The replace/random/keep
    choice is made per word, so a word is never half [MASK], half original. Examples that already
    hold ``labels`` (a pre-masked evaluation set) are only padded.
    """

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    _random_ids: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        if self.tokenizer.mask_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError("whole-word masking needs a tokenizer with [MASK] and [PAD] tokens")
        special = set(self.tokenizer.all_special_ids)
        # Random replacements come from ordinary tokens only, never [CLS]/[SEP]/[PAD]/[MASK]/[UNK].
        self._random_ids = torch.tensor([i for i in range(len(self.tokenizer)) if i not in special])

    def mask_sequence(self, input_ids: Sequence[int], word_ids: Sequence[int],
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked input ids, labels)`` of one sequence; labels hold the original id where masked."""
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        words = torch.as_tensor(word_ids, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        maskable = words >= 0
        if not bool(maskable.any()):
            return ids.clone(), labels
        unique_words, word_index = torch.unique(words[maskable], return_inverse=True)
        n_words = unique_words.numel()
        expected = n_words * self.mlm_probability
        n_chosen = int(expected) + int(torch.rand((), generator=generator) < (expected - int(expected)))
        if n_chosen == 0:
            return ids.clone(), labels
        chosen = torch.randperm(n_words, generator=generator)[:n_chosen]
        # Per chosen word: 0 -> [MASK], 1 -> random token, 2 -> keep (labels still set).
        draw = torch.rand(n_chosen, generator=generator)
        action = torch.full((n_words,), -1, dtype=torch.long)
        action[chosen] = torch.where(
            draw < self.mask_replace_prob, 0,
            torch.where(draw < self.mask_replace_prob + self.random_replace_prob, 1, 2),
        )
        token_action = torch.full_like(ids, -1)
        token_action[maskable] = action[word_index]
        masked = ids.clone()
        labels[token_action >= 0] = ids[token_action >= 0]
        masked[token_action == 0] = self.tokenizer.mask_token_id
        to_randomise = token_action == 1
        n_random = int(to_randomise.sum())
        if n_random:
            masked[to_randomise] = self._random_ids[torch.randint(len(self._random_ids), (n_random,), generator=generator)]
        return masked, labels

    def padded_length(self, lengths: Sequence[int]) -> int:
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        length = self.padded_length([len(e["input_ids"]) for e in examples])
        input_ids = torch.full((len(examples), length), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            if "labels" in example:
                ids, lab = torch.as_tensor(example["input_ids"]), torch.as_tensor(example["labels"])
            else:
                ids, lab = self.mask_sequence(example["input_ids"], example["word_ids"])
            n = ids.numel()
            input_ids[row, :n] = ids
            labels[row, :n] = lab
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


    def mask_example(self, example: dict, generator: torch.Generator | None = None) -> dict:
        masked, labels = self.mask_sequence(example["input_ids"], example["word_ids"], generator)
        return {"input_ids": masked, "labels": labels}


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The RNG of one sequence in one epoch: the same (seed, epoch, index) always draws the same masks."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63))


EVAL_EPOCH = -1  # the "epoch" of the evaluation masks, drawn once


def premask(examples: Sequence[dict], collator: WholeWordMaskCollator, seed: int) -> list[dict]:
    """Draw the masks of an evaluation set once, with a fixed seed, so every evaluation sees the same ones."""
    return [collator.mask_example(e, example_generator(seed, EVAL_EPOCH, i)) for i, e in enumerate(examples)]
