"""Fin-Eva question->context pairs to retriever training triples and a held-out evaluation folder.

    finbert2 convert fin-eva --input_dir $FINBERT2_PUBLIC_DATA/fin-eva --output_dir data/fin-eva-retrieval

Reads the five context files of Fin-Eva (金融文档抽取, 保险条款解读, 金融事件解读, 金融产品分析,
保险属性抽取; columns ``id, context, question, ...``): each question's positive is its context. The
unique contexts are split (seeded) into train and test, so no passage is shared: a question goes to
the side its context is on. Templated questions (one text, many contexts) are grouped: one training row
per question text with all its training contexts as ``pos`` (``--keep_duplicate_questions`` for one row per
pair). Writes ``train.jsonl`` (``{query, pos: [contexts], neg: [...]}``, negatives drawn at random from
training contexts of the same file that are no context of the question, to be replaced by mined ones) and
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
            seed: int = 42, validation_fraction: float = 0.0, keep_duplicate_questions: bool = False) -> dict[str, int]:
    """Split, group and write; returns the counts (also in ``conversion.json``).

    Fin-Eva has templated questions (one text asked of up to 47 contexts, e.g. most 保险属性抽取 rows):
    by default each question text becomes one training row whose ``pos`` are all its training contexts, its
    random negatives are never a context of that text (on any side), and a held-out query's relevant passages
    are every context of its text on its side. ``keep_duplicate_questions`` keeps one training row per
    (question, context) pair (the layout before grouping). ``test_queries_also_in_train`` counts the test
    questions also asked of training contexts: those contexts stay unjudged distractors for them.
    """
    pairs = read_pairs(input_dir)
    contexts = sorted({c for _, _, c in pairs})
    rng = random.Random(seed)
    order = contexts[:]
    rng.shuffle(order)
    test_contexts, validation_contexts = partition_groups(order, test_fraction, validation_fraction,
                                                          context_root(input_dir), "contexts")

    def split_of(context: str) -> str:
        return "test" if context in test_contexts else "validation" if context in validation_contexts else "train"

    train_pool_by_source: dict[str, list[str]] = {}
    contexts_of_question: dict[str, list[str]] = {}  # question text -> its contexts, every split, in file order
    for source, question, context in pairs:
        if split_of(context) == "train" and context not in train_pool_by_source.setdefault(source, []):
            train_pool_by_source[source].append(context)
        if context not in contexts_of_question.setdefault(question, []):
            contexts_of_question[question].append(context)

    def random_negatives(source: str, excluded: set[str]) -> list[str]:
        pool = [c for c in train_pool_by_source.get(source, []) if c not in excluded]
        return rng.sample(pool, min(negatives, len(pool)))

    train_rows: list[dict] = []
    held_out = {"test": ([], [], {}), "validation": ([], [], {})}  # queries, qrels, question -> id
    grouped_train: dict[str, dict] = {}
    for source, question, context in pairs:
        split = split_of(context)
        if split == "train":
            if keep_duplicate_questions:
                train_rows.append({"query": question, "pos": [context], "neg": random_negatives(source, {context})})
            elif question not in grouped_train:
                positives = [c for c in contexts_of_question[question] if split_of(c) == "train"]
                grouped_train[question] = {"query": question, "pos": positives,
                                           "neg": random_negatives(source, set(contexts_of_question[question]))}
                train_rows.append(grouped_train[question])
            continue
        queries, qrels, question_ids = held_out[split]
        if question not in question_ids:
            question_ids[question] = f"{'q' if split == 'test' else 'v'}{len(question_ids):05d}"
            queries.append({"id": question_ids[question], "text": question, "source": source})
        # every context of the text on this side; its contexts on other sides are true answers too, but judging
        # them here would make a training positive (or a validation passage) a test answer
        relevant = [context] if keep_duplicate_questions else \
            [c for c in contexts_of_question[question] if split_of(c) == split]
        qrels.extend({"qid": question_ids[question], "docid": context_id(c), "relevance": 1} for c in relevant)
    (queries, qrels, test_ids), (val_queries, val_qrels, _) = held_out["test"], held_out["validation"]
    qrels = list({(r["qid"], r["docid"]): r for r in qrels}.values())
    val_qrels = list({(r["qid"], r["docid"]): r for r in val_qrels}.values())
    corpus = [{"id": context_id(c), "title": "", "text": c} for c in contexts]
    validation = None
    if validation_contexts:  # train + validation contexts: no test passage in model selection
        val_corpus = [row for row, c in zip(corpus, contexts) if c not in test_contexts]
        validation = (val_corpus, val_queries, val_qrels)

    train_questions = {row["query"] for row in train_rows}
    relevant_per_query: dict[str, int] = {}
    for row in qrels:
        relevant_per_query[row["qid"]] = relevant_per_query.get(row["qid"], 0) + 1
    counts = {"pairs": len(pairs), "contexts": len(contexts), "test_contexts": len(test_contexts),
              "train_rows": len(train_rows), "test_queries": len(queries), "corpus": len(corpus),
              "grouped_questions": not keep_duplicate_questions,
              "train_rows_with_several_positives": sum(1 for r in train_rows if len(r["pos"]) > 1),
              "test_queries_with_several_relevant": sum(1 for n in relevant_per_query.values() if n > 1),
              "test_queries_also_in_train": sum(1 for q in test_ids if q in train_questions)}
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
                                   "Share of contexts held out for test.", convert,
                                   extra_options={"keep_duplicate_questions": {
                                       "action": "store_true",
                                       "help": "One training row per (question, context) pair and only the split's "
                                               "own contexts relevant (the layout before questions were grouped)."}})

if __name__ == "__main__":
    sys.exit(main())
