"""Seeded splits shared by the stages that carve held-out data from their training input."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from finbert2.errors import DataError

T = TypeVar("T")


def split_heldout(items: Sequence[T], percentage: float, seed: int) -> tuple[list[T], list[T]]:
    """A seeded random split keeping input order; at least one item on each side when there are two or more."""
    if percentage <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_heldout = min(len(items) - 1, max(1, round(len(items) * percentage / 100)))
    heldout_ids = set(order[:n_heldout])
    return ([x for i, x in enumerate(items) if i not in heldout_ids],
            [x for i, x in enumerate(items) if i in heldout_ids])


def held_out_count(n_groups: int, fraction: float, source, what: str) -> int:
    """How many of ``n_groups`` (contexts, reports) go to a test split: the rounded fraction, but at
    least one and never all, so neither the training file nor the evaluation folder comes out empty."""
    if n_groups < 2:
        raise DataError(source, None, f"{n_groups} distinct {what}: need at least 2 to hold some out for test")
    return min(n_groups - 1, max(1, round(n_groups * fraction)))
