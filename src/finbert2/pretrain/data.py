"""Corpus -> tokenized examples with jieba word ids: line-by-line or packed, plus the held-out split."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

import torch

from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from finbert2.data.splits import split_heldout
from finbert2.data import read_corpus
from finbert2.errors import ConfigError
from finbert2.pretrain.args import PretrainDataArguments
from finbert2.pretrain.whole_word_masking import JiebaWordSegmenter, example_generator, token_word_ids

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 256  # documents per fast-tokenizer call


class PretrainDataset(Dataset):
    """A list of ``{"input_ids": [...], "word_ids": [...]}`` (or pre-masked ``labels``) examples."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]

    def num_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)


class EpochMaskedDataset(Dataset):
    """Training examples masked when fetched, by ``mask(example, generator)``, fresh every epoch.

    The generator is seeded by (seed, epoch, index), so masks change from epoch to epoch but a
    resumed run, another worker count or another rank draws the same ones for the same sequence.
    ``set_epoch`` is called at each epoch start (``EpochCallback``).
    """

    def __init__(self, dataset: PretrainDataset, mask: Callable[[dict, torch.Generator], dict], seed: int):
        self.dataset = dataset
        self.mask = mask
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.mask(self.dataset[index], example_generator(self.seed, self.epoch, index))


def _tokenize_with_words(documents: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                         segmenter: JiebaWordSegmenter, add_special_tokens: bool, max_length: int | None,
                         desc: str):
    """Yield ``(input_ids, word_ids)`` per document; word ids are unique across documents."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("pretraining needs a fast tokenizer (tokenizer.json) for character offsets")
    word_offset = 0
    for start in tqdm(range(0, len(documents), TOKENIZE_BATCH), desc=desc, unit_scale=TOKENIZE_BATCH,
                      disable=len(documents) < 4 * TOKENIZE_BATCH):
        batch = list(documents[start:start + TOKENIZE_BATCH])
        encoded = tokenizer(
            batch, add_special_tokens=add_special_tokens, truncation=max_length is not None,
            max_length=max_length, return_offsets_mapping=True, return_special_tokens_mask=True,
            return_attention_mask=False, return_token_type_ids=False,
        )
        for text, ids, offsets, special in zip(batch, encoded["input_ids"], encoded["offset_mapping"],
                                               encoded["special_tokens_mask"]):
            owner = segmenter.char_to_word(text)
            yield ids, token_word_ids(owner, offsets, special, word_offset)
            word_offset += (max(owner) + 1) if owner else 0


def line_by_line_examples(documents: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                          segmenter: JiebaWordSegmenter, max_seq_length: int, desc: str = "tokenizing",
                          limit: int | None = None) -> list[dict]:
    """One example per document, truncated to ``max_seq_length`` tokens ([CLS] ... [SEP]).

    ``limit``: stop after that many examples, leaving the rest of the corpus untokenized.
    """
    examples = ({"input_ids": ids, "word_ids": words}
                for ids, words in _tokenize_with_words(documents, tokenizer, segmenter, True, max_seq_length, desc)
                if len(ids) > 2)
    return list(itertools.islice(examples, limit))


def packed_examples(documents: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                    segmenter: JiebaWordSegmenter, max_seq_length: int, desc: str = "tokenizing",
                    limit: int | None = None) -> list[dict]:
    """Documents joined by [SEP] into one stream, cut into ``[CLS] block [SEP]`` examples of ``max_seq_length``.

    No padding is wasted; the last, shorter block is kept. A word cut by a block boundary becomes
    two words, one per block. ``limit``: stop after that many examples (the first ``limit`` of the
    full result), leaving the rest of the corpus untokenized.
    """
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    block = max_seq_length - 2
    examples: list[dict] = []
    ids_buffer: list[int] = []
    words_buffer: list[int] = []
    started = False

    def flush(n: int) -> None:
        examples.append({"input_ids": [cls_id, *ids_buffer[:n], sep_id], "word_ids": [-1, *words_buffer[:n], -1]})
        del ids_buffer[:n], words_buffer[:n]

    for ids, words in _tokenize_with_words(documents, tokenizer, segmenter, False, None, desc):
        if not ids:
            continue
        if started:  # a [SEP] between documents, never masked
            ids_buffer.append(sep_id)
            words_buffer.append(-1)
        started = True
        ids_buffer += ids
        words_buffer += words
        while len(ids_buffer) >= block:
            flush(block)
        if limit is not None and len(examples) >= limit:
            return examples[:limit]
    if ids_buffer and any(w >= 0 for w in words_buffer):
        flush(len(ids_buffer))
    return examples


def build_datasets(data_args: PretrainDataArguments, tokenizer: PreTrainedTokenizerBase,
                   seed: int) -> tuple[PretrainDataset, PretrainDataset, dict]:
    """Read and validate the corpus, split off held-out documents, tokenize both sides.

    Returns the training and held-out datasets and a summary for the run record.
    """
    documents = read_corpus(data_args.train_data, data_args.text_field)
    if data_args.eval_data:
        train_docs, eval_docs = documents, read_corpus(data_args.eval_data, data_args.text_field)
    else:
        train_docs, eval_docs = split_heldout(documents, data_args.validation_split_percentage, seed)
    if data_args.max_seq_length > tokenizer.model_max_length:
        raise ConfigError(f"pretrain: max_seq_length {data_args.max_seq_length} exceeds the tokenizer's "
                          f"model_max_length {tokenizer.model_max_length}")
    segmenter = JiebaWordSegmenter(data_args.jieba_user_dict)
    make = line_by_line_examples if data_args.line_by_line else packed_examples
    train = make(train_docs, tokenizer, segmenter, data_args.max_seq_length, "tokenizing train",
                 limit=data_args.max_train_samples)
    heldout = make(eval_docs, tokenizer, segmenter, data_args.max_seq_length, "tokenizing eval",
                   limit=data_args.max_eval_samples) if eval_docs else []
    if not train:
        raise ConfigError("pretrain: the training corpus gives no sequences")
    summary = {
        "train_documents": len(train_docs), "eval_documents": len(eval_docs),
        "train_sequences": len(train), "eval_sequences": len(heldout),
        "corpus_train_tokens": sum(len(e["input_ids"]) for e in train),
    }
    logger.info("corpus: %s", summary)
    return PretrainDataset(train), PretrainDataset(heldout), summary
