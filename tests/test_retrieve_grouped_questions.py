"""Templated questions (one text asked of several contexts, as in Fin-Eva): grouped into one training row, and
no positive of a question text ever serves as its negative (converter, mining, random top-ups, in-batch)."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from finbert2.converters import fin_eva
from finbert2.data import read_retrieval_eval, read_retrieval_train
from finbert2.retrieve.data import ContrastiveCollator, ContrastiveGroupDataset
from finbert2.retrieve.mine import mine_hard_negatives
from finbert2.retrieve.modeling import false_negative_mask, text_ids

TEMPLATE = "保险期间是多久？"


def _fin_eva_folder(tmp_path):
    """Five source files; the insurance file asks TEMPLATE of 6 contexts, every other question is unique."""
    root = tmp_path / "fin-eva" / "data" / "Ant"
    for k, relative in enumerate(fin_eva.CONTEXT_FILES):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "context", "question"])
            for i in range(12):
                context = f"文件{k}第{i}段：本产品的保险期间为{i + 1}年，保费按年缴纳，金额{100 * i + k}元。"
                question = TEMPLATE if relative.endswith("保险属性抽取.csv") and i < 6 else f"文件{k}问题{i}是什么？"
                writer.writerow([i, context, question])
    return tmp_path / "fin-eva"


def test_converter_groups_a_templated_question_into_one_row(tmp_path):
    source = _fin_eva_folder(tmp_path)
    counts = fin_eva.convert(source, tmp_path / "grouped", test_fraction=0.25, negatives=5, seed=1)
    old = fin_eva.convert(source, tmp_path / "old", test_fraction=0.25, negatives=5, seed=1,
                          keep_duplicate_questions=True)
    template_contexts = {c for _, q, c in fin_eva.read_pairs(source) if q == TEMPLATE}
    rows = read_retrieval_train(tmp_path / "grouped" / "train.jsonl")
    template_rows = [r for r in rows if r["query"] == TEMPLATE]
    test = read_retrieval_eval(tmp_path / "grouped" / "eval")
    test_contexts = {test.corpus[d]["text"] for docs in test.qrels.values() for d in docs}
    # one row, every training context of the text a positive; none of its contexts (any side) a negative
    assert len(template_rows) == 1
    assert set(template_rows[0]["pos"]) == template_contexts - test_contexts
    assert len(template_rows[0]["pos"]) >= 2
    for row in rows:
        own = {c for _, q, c in fin_eva.read_pairs(source) if q == row["query"]}
        assert not own & set(row["neg"]), row["query"]
    old_rows = read_retrieval_train(tmp_path / "old" / "train.jsonl")
    assert sum(r["query"] == TEMPLATE for r in old_rows) == len(template_rows[0]["pos"])
    assert counts["train_rows"] == old["train_rows"] - len(template_rows[0]["pos"]) + 1
    assert counts["train_rows_with_several_positives"] == 1 and old["train_rows_with_several_positives"] == 0
    # held out: one query per text, every context of it on the test side relevant
    template_ids = [q for q, text in test.queries.items() if text == TEMPLATE]
    if template_ids:
        relevant = {test.corpus[d]["text"] for d in test.qrels[template_ids[0]]}
        assert relevant == template_contexts & test_contexts and len(template_ids) == 1


class AngleEncoder:
    """Passages at given angles on the unit circle; every query at angle 0."""

    def __init__(self, angles):
        self.angles = angles

    def encode_passages(self, texts, **kwargs):
        return np.stack([[np.cos(np.deg2rad(self.angles[t])), np.sin(np.deg2rad(self.angles[t]))]
                         for t in texts]).astype(np.float32)

    def encode_queries(self, texts, **kwargs):
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


def test_mining_excludes_every_positive_of_the_same_question_text():
    # two rows ask the same text with different positives (the layout before grouping); each ranks the other's
    # positive first: it must never come back as a negative, mined or topped up at random
    angles = {"a": 5.0, "b": 1.0, **{f"c{i}": 10.0 + 3 * i for i in range(20)}}
    rows = [{"query": TEMPLATE, "pos": ["a"]}, {"query": TEMPLATE + " ", "pos": ["b"]},
            {"query": "别的问题", "pos": ["c0"]}]
    pool = [t for t in angles if t not in {"a", "b"}]
    for fill in (False, True):
        mined, _ = mine_hard_negatives(AngleEncoder(angles), rows, pool, range_start=0, range_end=6, number=5,
                                       fill_random=fill, seed=0)
        assert not {"a", "b"} & set(mined[0]["neg"]) and not {"a", "b"} & set(mined[1]["neg"])
        assert "c0" not in mined[2]["neg"] and len(mined[0]["neg"]) == (5 if fill else 4)  # 6 ranked - a, b
    # another question's row may still use them: they are not its positives
    mined, _ = mine_hard_negatives(AngleEncoder(angles), rows, pool, range_start=0, range_end=25, number=20)
    assert {"a", "b"} <= set(mined[2]["neg"])


def test_in_batch_mask_covers_every_positive_of_the_row():
    class Tokenizer:  # only what the collator needs for the ids
        def __call__(self, texts, **kwargs):
            return {"input_ids": torch.zeros(len(texts), 2, dtype=torch.long)}

    rows = [{"query": "q0", "pos": ["A", "B"], "neg": ["n0"]},
            {"query": "q1", "pos": ["C"], "neg": ["B"]},  # q1's hard negative is another positive of q0
            {"query": "q2", "pos": ["B"], "neg": ["n2"]}]  # a context that answers q0 and q2
    dataset = ContrastiveGroupDataset(rows, group_size=2, seed=0)
    batch = ContrastiveCollator(Tokenizer())([dataset[i] for i in range(3)])
    assert batch["positive_ids"].shape == (3, 2)
    assert batch["positive_ids"][1, 1] == -1  # padded to the widest row
    mask = false_negative_mask(batch["query_ids"], batch["passage_ids"], batch["positive_ids"])
    columns = [g for i in range(3) for g in dataset[i]["passages"]]
    for i, row in enumerate(rows):
        for j, text in enumerate(columns):
            own_target = j == 2 * i
            assert bool(mask[i, j]) == (text in row["pos"] and not own_target), (i, j, text)
    # by hand: q0 sampled A, its other positive B sits in q1's group; only the positive ids mask it
    query_ids, passage_ids = text_ids(["q0", "q1"]), text_ids(["A", "n0", "C", "B"])
    positive_ids = torch.stack([text_ids(["A", "B"]), torch.tensor([text_ids(["C"]).item(), -1])])
    assert not false_negative_mask(query_ids, passage_ids).any()
    assert false_negative_mask(query_ids, passage_ids, positive_ids).tolist() == [[False, False, False, True],
                                                                                  [False, False, False, False]]
