"""Fin-Eva question->context pairs to retriever training triples and a held-out evaluation folder.

    finbert2 convert fin-eva --input_dir $FINBERT2_PUBLIC_DATA/fin-eva --output_dir data/fin-eva-retrieval

Reads the five context files of Fin-Eva (金融文档抽取, 保险条款解读, 金融事件解读, 金融产品分析,
保险属性抽取; columns ``id, context, question, ...``): each question's positive is its context. The
unique contexts are split (seeded) into train and test, so no passage is shared: a question goes to
the side its context is on. Writes ``train.jsonl`` (``{query, pos: [context], neg: [...]}``, negatives
drawn at random from other training contexts of the same file, to be replaced by mined ones) and
``eval/{corpus,test_queries,test_qrels}.jsonl`` whose corpus is every context (train contexts act as
distractors, as in FIR-bench). ``--validation_fraction`` also holds contexts out into ``validation/``
(same layout, corpus without the test contexts) for choosing settings. Prints the counts.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from finbert2.converters._retrieval_split import partition_groups, run_retrieval_converter, write_retrieval_split
from finbert2.data import iter_csv
from finbert2.data.public import public_data_dir
from finbert2.errors import DataError

CONTEXT_FILES = ["金融知识/金融文档抽取.csv", "金融逻辑/保险条款解读.csv", "金融逻辑/金融事件解读.csv",
                 "金融逻辑/金融产品分析.csv", "金融逻辑/保险属性抽取.csv"]


def context_root(input_dir: Path) -> Path:
    """The folder holding CONTEXT_FILES: ``<input_dir>/data/Ant`` in the Fin-Eva checkout, else ``input_dir``."""
    return input_dir / "data" / "Ant" if (input_dir / "data" / "Ant").is_dir() else input_dir


def read_pairs(input_dir: Path) -> list[tuple[str, str, str]]:
    """``(source file stem, question, context)`` for every row with both fields."""
    root = context_root(input_dir)
    pairs = []
    for relative in CONTEXT_FILES:
        path = root / relative
        if not path.is_file():
            raise DataError(path, None, "missing Fin-Eva context file (expected <input_dir>/data/Ant/...)")
        for _, row in iter_csv(path):
            if "context" not in row or "question" not in row:
                raise DataError(path, 1, "expected columns 'context' and 'question'")
            question, context = (row["question"] or "").strip(), (row["context"] or "").strip()
            if question and context:
                pairs.append((path.stem, question, context))
    return pairs


def context_id(context: str) -> str:
    return "ctx-" + hashlib.sha1(context.encode("utf-8")).hexdigest()[:12]


def convert(input_dir: Path, output_dir: Path, test_fraction: float = 0.3, negatives: int = 7,
            seed: int = 42, validation_fraction: float = 0.0) -> dict[str, int]:
    pairs = read_pairs(input_dir)
    contexts = sorted({c for _, _, c in pairs})
    rng = random.Random(seed)
    order = contexts[:]
    rng.shuffle(order)
    test_contexts, validation_contexts = partition_groups(order, test_fraction, validation_fraction,
                                                          context_root(input_dir), "contexts")

    train_pool_by_source: dict[str, list[str]] = {}
    for source, _, context in pairs:
        if context not in test_contexts and context not in validation_contexts:
            train_pool_by_source.setdefault(source, [])
            if context not in train_pool_by_source[source]:
                train_pool_by_source[source].append(context)

    train_rows = []
    held_out = {"test": ([], [], {}), "validation": ([], [], {})}  # queries, qrels, question -> id
    for source, question, context in pairs:
        split = "test" if context in test_contexts else "validation" if context in validation_contexts else None
        if split is None:
            pool = [c for c in train_pool_by_source[source] if c != context]
            neg = rng.sample(pool, min(negatives, len(pool)))
            train_rows.append({"query": question, "pos": [context], "neg": neg})
            continue
        queries, qrels, question_ids = held_out[split]
        if question not in question_ids:
            question_ids[question] = f"{'q' if split == 'test' else 'v'}{len(question_ids):05d}"
            queries.append({"id": question_ids[question], "text": question, "source": source})
        qrels.append({"qid": question_ids[question], "docid": context_id(context), "relevance": 1})
    (queries, qrels, _), (val_queries, val_qrels, _) = held_out["test"], held_out["validation"]
    qrels = list({(r["qid"], r["docid"]): r for r in qrels}.values())
    val_qrels = list({(r["qid"], r["docid"]): r for r in val_qrels}.values())
    corpus = [{"id": context_id(c), "title": "", "text": c} for c in contexts]
    validation = None
    if validation_contexts:  # train + validation contexts: no test passage in model selection
        val_corpus = [row for row, c in zip(corpus, contexts) if c not in test_contexts]
        validation = (val_corpus, val_queries, val_qrels)

    counts = {"pairs": len(pairs), "contexts": len(contexts), "test_contexts": len(test_contexts),
              "train_rows": len(train_rows), "test_queries": len(queries), "corpus": len(corpus)}
    if validation:
        counts.update(validation_contexts=len(validation_contexts), validation_queries=len(val_queries),
                      validation_corpus=len(validation[0]))
    write_retrieval_split(output_dir, train_rows, corpus, queries, qrels,
                          {"source": "Fin-Eva (CC BY 4.0)", "seed": seed, "test_fraction": test_fraction,
                           "validation_fraction": validation_fraction, **counts}, validation=validation)
    return counts


def main(argv: list[str] | None = None) -> int:
    return run_retrieval_converter(argv, "finbert2 convert fin-eva", __doc__.splitlines()[0],
                                   str(public_data_dir() / "fin-eva"), "Fin-Eva folder (with data/Ant/).",
                                   "Share of contexts held out for test.", convert)

if __name__ == "__main__":
    sys.exit(main())
