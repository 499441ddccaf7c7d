"""Training groups for the contrastive loss: a query with 1 positive and ``train_group_size - 1`` negatives."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from finbert2.retrieve.modeling import text_ids


class ContrastiveGroupDataset(Dataset):
    """FlagEmbedding-format rows ``{"query", "pos", "neg"}`` to ``(query, [pos, neg...])`` groups.

    The positive is drawn from ``pos`` and the negatives from ``neg`` (without replacement when there
    are enough, else repeated, as FlagEmbedding does); draws depend on ``seed``, the epoch and the
    row, so a resumed run sees the same groups. Each group also carries the text ids of *all* its row's
    positives (padded with -1 to the widest row, the same width on every rank), so the loss never treats
    another positive of the query as a negative.
    """

    def __init__(self, rows: list[dict[str, Any]], group_size: int, query_instruction: str = "",
                 passage_instruction: str = "", seed: int = 42):
        self.rows = rows
        self.group_size = group_size
        self.query_instruction = query_instruction
        self.passage_instruction = passage_instruction
        self.seed = seed
        self.epoch = 0
        self.positive_width = max((len(r["pos"]) for r in rows), default=1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        positive = rng.choice(row["pos"])
        wanted = self.group_size - 1
        negatives = list(row.get("neg") or [])
        if wanted and not negatives:
            raise ValueError(f"row {index} has no negatives but train_group_size is {self.group_size}")
        if len(negatives) >= wanted:
            negatives = rng.sample(negatives, wanted)
        else:
            negatives = [rng.choice(negatives) for _ in range(wanted)] if wanted else []
        positive_ids = text_ids([self.passage_instruction + p for p in row["pos"]]).tolist()
        return {
            "query": self.query_instruction + row["query"],
            "passages": [self.passage_instruction + p for p in [positive, *negatives]],
            "positive_ids": positive_ids + [-1] * (self.positive_width - len(positive_ids)),
        }


@dataclass
class ContrastiveCollator:
    """Tokenise a list of groups into ``{"query": features (B), "passage": features (B*G)}``."""

    tokenizer: Any
    query_max_len: int = 64
    passage_max_len: int = 256
    pad_to_multiple_of: int | None = 8  # 0 or None: to the longest text only

    def __call__(self, groups: list[dict[str, Any]]) -> dict[str, Any]:
        queries = [g["query"] for g in groups]
        passages = [p for g in groups for p in g["passages"]]
        kwargs = {"padding": True, "truncation": True, "return_tensors": "pt",
                  "pad_to_multiple_of": self.pad_to_multiple_of or None, "return_token_type_ids": False}
        return {
            "query": dict(self.tokenizer(queries, max_length=self.query_max_len, **kwargs)),
            "passage": dict(self.tokenizer(passages, max_length=self.passage_max_len, **kwargs)),
            # text ids: the loss leaves in-batch copies of a query's positive out of its negatives
            "query_ids": text_ids(queries),
            "passage_ids": text_ids(passages),
            **({"positive_ids": torch.tensor([g["positive_ids"] for g in groups], dtype=torch.long)}
               if all("positive_ids" in g for g in groups) else {}),
        }
