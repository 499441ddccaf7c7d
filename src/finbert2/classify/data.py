"""Reading the train / validation / test splits, the label map, and turning texts into model inputs."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from finbert2.classify.longtext import LongTextSettings, encode_texts
from finbert2.data import ClassificationData, read_classification
from finbert2.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass
class Splits:
    train: ClassificationData
    validation: ClassificationData
    test: ClassificationData | None
    label_names: list[str]
    multi_label: bool
    validation_carved: bool  # True when validation was split off train


def _check_known(data: ClassificationData, label_names: list[str], source: str) -> None:
    known = set(label_names)
    for label in data.label_names():
        if label not in known:
            raise DataError(data.path, None, f"label '{label}' does not occur in {source} (labels: {sorted(known)})")


def carve_validation(data: ClassificationData, percentage: float, seed: int) -> tuple[ClassificationData, ClassificationData]:
    """A seeded validation split of ``data``, stratified by label (single-label) when every class allows it."""
    n = len(data.texts)
    n_val = max(1, int(round(n * percentage / 100)))
    if n - n_val < 1:
        raise DataError(data.path, None, f"{n} row(s) are too few to hold out a validation split")
    stratify = None
    if not data.multi_label:
        counts = Counter(data.labels)
        # Stratifying needs 2+ rows per class and a validation split that can hold every class.
        if min(counts.values()) >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
            stratify = data.labels
        else:
            logger.warning("validation split is not stratified (a class has fewer than 2 rows or the split is small)")
    train_idx, val_idx = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)

    def take(indices) -> ClassificationData:
        return ClassificationData(texts=[data.texts[i] for i in indices], labels=[data.labels[i] for i in indices],
                                  multi_label=data.multi_label, path=data.path)

    return take(sorted(train_idx)), take(sorted(val_idx))


def load_splits(train_data, eval_data, test_data, *, text_field="text", label_field="label", label_names=None,
                multi_label=None, validation_split_percentage=10.0, seed=42) -> Splits:
    """Read and validate every split before any work. Labels outside the training labels are errors."""
    train = read_classification(train_data, text_field, label_field, label_set=label_names, multi_label=multi_label)
    multi = train.multi_label
    names = list(label_names) if label_names else train.label_names()
    if not multi and len(names) < 2:
        raise DataError(train.path, None, f"a classifier needs at least 2 labels, found {names}")
    _check_known(train, names, "label_names")
    validation = None
    if eval_data:
        validation = read_classification(eval_data, text_field, label_field, multi_label=multi)
        _check_known(validation, names, "the training labels")
    test = None
    if test_data:
        test = read_classification(test_data, text_field, label_field, multi_label=multi)
        _check_known(test, names, "the training labels")
    carved = validation is None
    if carved:
        train, validation = carve_validation(train, validation_split_percentage, seed)
        logger.info("validation: %d rows carved (stratified) from %d training rows", len(validation.texts),
                    len(train.texts) + len(validation.texts))
    return Splits(train=train, validation=validation, test=test, label_names=names, multi_label=multi,
                  validation_carved=carved)


def label_targets(data: ClassificationData, label_names: list[str]) -> np.ndarray:
    """Label ids (single-label, shape (n,)) or a 0/1 indicator matrix (multi-label, shape (n, k))."""
    index = {name: i for i, name in enumerate(label_names)}
    if data.multi_label:
        targets = np.zeros((len(data.labels), len(label_names)), dtype=np.int64)
        for row, labels in enumerate(data.labels):
            targets[row, [index[label] for label in labels]] = 1
        return targets
    return np.array([index[label] for label in data.labels], dtype=np.int64)


class EncodedDataset(torch.utils.data.Dataset):
    """Model inputs (one per window) with their text's target; ``owners[i]`` is the text of input ``i``."""

    def __init__(self, input_ids: list[list[int]], owners: list[int], targets: np.ndarray | None,
                 multi_label: bool):
        self.input_ids = input_ids
        self.owners = np.asarray(owners, dtype=np.int64)
        self.targets = targets
        self.multi_label = multi_label

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, i):
        item = {"input_ids": self.input_ids[i]}
        if self.targets is not None:
            target = self.targets[self.owners[i]]
            item["labels"] = target.astype(np.float32).tolist() if self.multi_label else int(target)
        return item


def encode_split(tokenizer, data: ClassificationData, label_names: list[str],
                 settings: LongTextSettings) -> EncodedDataset:
    input_ids, owners, _ = encode_texts(tokenizer, data.texts, settings)
    return EncodedDataset(input_ids, owners, label_targets(data, label_names), data.multi_label)


class PadCollator:
    """Pad ``input_ids`` to the longest in the batch; float labels for multi-label, long otherwise."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            ids = feature["input_ids"]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            dtype = torch.float32 if isinstance(labels[0], list) else torch.long
            batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


def pool_by_owner(logits: np.ndarray, owners: np.ndarray, n_texts: int) -> np.ndarray:
    """Mean of the window logits of each text (identity when every text is one window)."""
    if len(owners) == n_texts and np.array_equal(owners, np.arange(n_texts)):
        return logits
    sums = np.zeros((n_texts, logits.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, logits)
    counts = np.bincount(owners, minlength=n_texts).astype(np.float64)
    return (sums / counts[:, None]).astype(logits.dtype)


def class_weights(targets: np.ndarray, num_labels: int, multi_label: bool) -> torch.Tensor:
    """Balanced weights: ``n / (k * count)`` per class; multi-label: ``negatives / positives`` per label."""
    if multi_label:
        positives = targets.sum(axis=0).astype(np.float64)
        negatives = len(targets) - positives
        return torch.tensor(np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0), dtype=torch.float32)
    counts = np.bincount(targets, minlength=num_labels).astype(np.float64)
    if (counts == 0).any():
        raise ConfigError("class_weighting: a label in label_names has no training rows")
    return torch.tensor(len(targets) / (num_labels * counts), dtype=torch.float32)


def split_rows(rows: list[dict], fractions: dict[str, float], seed: int = 42,
               label_key: str = "label") -> dict[str, list[dict]]:
    """Split labelled rows into named parts (e.g. ``{"validation": 0.1, "test": 0.2}``, the rest is
    ``train``), stratified by label when every label has enough rows; original order kept in each part."""
    remaining = list(range(len(rows)))
    parts: dict[str, list[int]] = {}
    total = len(rows)
    for name, fraction in fractions.items():
        size = int(round(total * fraction))
        if size == 0:
            continue
        if size >= len(remaining):
            raise ConfigError(f"split '{name}' ({fraction}) leaves no training rows")
        labels = [str(rows[i][label_key]) for i in remaining]
        counts = Counter(labels)
        stratify = labels if min(counts.values()) >= 2 and size >= len(counts) else None
        keep, taken = train_test_split(remaining, test_size=size, random_state=seed, stratify=stratify)
        parts[name] = sorted(taken)
        remaining = sorted(keep)
    parts["train"] = remaining
    return {name: [rows[i] for i in indices] for name, indices in parts.items()}


def write_labelled_output(rows: list[dict], output: str, test_fraction: float = 0.0,
                          validation_fraction: float = 0.0, seed: int = 42) -> dict[str, int]:
    """Write converted rows: to one file when ``output`` ends in .jsonl, else to a folder holding
    ``train.jsonl``, ``test.jsonl`` (and ``validation.jsonl``) split by label. Returns rows per file."""
    from pathlib import Path

    from finbert2.data import write_jsonl

    out = Path(output)
    if out.suffix.lower() in {".jsonl", ".json"}:
        if test_fraction or validation_fraction:
            raise ConfigError(f"{out}: split fractions need a folder as output, not a .jsonl file")
        write_jsonl(out, rows)
        return {out.name: len(rows)}
    parts = split_rows(rows, {"test": test_fraction, "validation": validation_fraction}, seed)
    counts = {}
    for name, part in parts.items():
        write_jsonl(out / f"{name}.jsonl", part)
        counts[f"{name}.jsonl"] = len(part)
    return counts
