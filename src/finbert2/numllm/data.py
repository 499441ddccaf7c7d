"""Training sequences for the two LoRA modules, and the collator that keeps the loss to labelled tokens.

The output layer of a large-vocabulary LM (gemma-3: 262k rows) costs more than the rest of a small
model; computing it for prompt tokens whose loss is discarded wastes most of a step. The collator
therefore passes the model ``logits_to_keep`` (the positions whose next token is a target, over the
batch) and the matching ``shift_labels``: transformers' causal-LM forward computes logits at those
positions only and its loss uses the given targets. Counting targets the Trainer way
(``shift_labels``) keeps the loss a per-target mean under gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from finbert2.data.readers import get_text, iter_corpus_lines, iter_records
from finbert2.data.splits import split_heldout
from finbert2.errors import DataError
from finbert2.numllm.questions import question_from_record, render_prompt

IGNORE = -100


def _bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = tokenizer("", add_special_tokens=True)["input_ids"]  # what the tokenizer puts in front (gemma: <bos>)
    return list(ids)


def encode_prompt_answer(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int) -> dict:
    """``prompt`` + ``answer`` + eos; labels only on the answer and eos (the prompt is cut from the left to fit)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prefix = _bos(tokenizer)
    room = max_length - len(prefix) - len(answer_ids)
    if room < 1:
        raise ValueError(f"answer of {len(answer_ids)} tokens does not fit max_seq_length {max_length}")
    prompt_ids = prefix + prompt_ids[-room:]
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE] * len(prompt_ids) + answer_ids}


def chunk_documents(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block: int) -> list[dict]:
    """Each document cut into sequences of at most ``block`` tokens, every one starting with the
    tokenizer's prefix (gemma: ``<bos>``, which gemma needs at the start of every sequence) and the
    document's last ending with eos; every token after the prefix is a target."""
    prefix = _bos(tokenizer)
    step = block - len(prefix)
    sequences = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for start in range(0, len(ids), step):
            piece = prefix + ids[start:start + step]
            sequences.append({"input_ids": piece, "labels": [IGNORE] * len(prefix) + piece[len(prefix):]})
    return sequences


def read_prompt_answer_items(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``(prompt, answer)`` from ``{prompt, answer}`` rows, or question rows rendered as evaluation prompts."""
    items = []
    for path in paths:
        for lineno, obj in iter_records(path):
            if "prompt" in obj:
                items.append((get_text(obj, "prompt", Path(path), lineno), get_text(obj, "answer", Path(path), lineno)))
            elif "question" in obj:
                q = question_from_record(obj, Path(path), lineno)
                items.append((render_prompt(q), q.answer))
            else:
                raise DataError(path, lineno, "expected fields 'prompt' and 'answer' (or a question record)")
    return items


def build_sequences(data_args, tokenizer: PreTrainedTokenizerBase, seed: int) -> tuple[list, list, dict]:
    """Training and held-out sequences for ``data_args.task``, and a summary for the record."""
    if data_args.task == "domain":
        def read(paths):
            return [text for _, _, text in iter_corpus_lines(paths, data_args.text_field)]

        def encode(docs):
            return chunk_documents(tokenizer, docs, data_args.max_seq_length)
    else:
        read = read_prompt_answer_items

        def encode(items):
            return [encode_prompt_answer(tokenizer, p, a, data_args.max_seq_length) for p, a in items]
    train_docs = read(data_args.train_data)
    if data_args.eval_data:
        eval_docs = read(data_args.eval_data)
    else:
        train_docs, eval_docs = split_heldout(train_docs, data_args.validation_split_percentage, seed)
    train, held_out = encode(train_docs), encode(eval_docs)
    if not train:
        raise DataError(data_args.train_data[0], None, "no training sequence (the files hold no text)")
    train = train[:data_args.max_train_samples] if data_args.max_train_samples else train
    held_out = held_out[:data_args.max_eval_samples] if data_args.max_eval_samples else held_out
    summary = {"train_documents": len(train_docs), "eval_documents": len(eval_docs),
               "train_sequences": len(train), "eval_sequences": len(held_out),
               "train_target_tokens": sum(sum(t != IGNORE for t in s["labels"]) for s in train)}
    return train, held_out, summary


class LabelledPositionsCollator:
    """Pad a batch (right) and add ``logits_to_keep`` + ``shift_labels`` (see the module docstring)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        next_labels = labels[:, 1:]  # the token each position predicts
        keep = (next_labels != IGNORE).any(0).nonzero().squeeze(1)
        if keep.numel() == 0:
            keep = torch.tensor([0])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "logits_to_keep": keep, "shift_labels": next_labels[:, keep].contiguous()}
