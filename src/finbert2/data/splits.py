"""Seeded splits shared by the stages that carve held-out data from their training input."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

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
