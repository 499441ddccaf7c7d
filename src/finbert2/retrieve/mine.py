"""Hard-negative mining: rank a candidate pool for each query with faiss, sample negatives from a rank range.

    finbert2 retrieve mine --model_name_or_path runs/retromae --input_file data/demo/retrieval/queries.jsonl \\
        --candidate_pool data/demo/retrieval/candidates.jsonl --range_for_sampling 2-50 --negative_number 7 \\
        --output_file runs/mined.jsonl

A candidate is never a positive of its query text (in any row that asks it), nor a near-duplicate of one (same text after
whitespace normalisation, or, when set, cosine to a positive >= ``duplicate_threshold``); with ``margin`` it
must also score at most ``positive score - margin`` (a false-negative guard: a passage that scores
like the positive is probably another answer). Kept candidates are sampled from ranks
``[start, end)`` of the ranking (0 = best), counted before any filtering. With ``fill_random`` a query
left short (a positive ranked low sits among candidates that all score like it) gets the rest from
random pool passages under the same rules, as FlagEmbedding's ``hn_mine`` does; without it such a
query keeps fewer negatives, and one with none is dropped from the output.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from finbert2.data import iter_corpus, read_retrieval_train, write_jsonl
from finbert2.errors import DataError, OutputDirError
from finbert2.retrieve.encoder import DenseEncoder
from finbert2.retrieve.mine_first_stage import BM25, mine_with_first_stage
from finbert2.retrieve.search import build_index, search_index
from finbert2.precision import command_bf16

logger = logging.getLogger("finbert2.retrieve")


def _normalise(text: str) -> str:
    return "".join(text.split())


def read_queries_with_positives(path: str | Path) -> list[dict[str, Any]]:
    rows = [{"query": r["query"], "pos": r["pos"]} for r in read_retrieval_train(path, require_neg=False)]
    if not rows:
        raise DataError(Path(path), None, "no rows")
    return rows


def select_negatives(ranked_ids: list[int], ranked_scores: list[float], positive_ids: set[int],
                     positive_score: float, duplicate_ids: set[int], range_start: int, range_end: int,
                     number: int, margin: float | None, rng: random.Random) -> list[int]:
    """Pool rows to use as negatives: from ranks [start, end), minus positives, duplicates and the margin."""
    eligible = []
    for rank, (row, score) in enumerate(zip(ranked_ids, ranked_scores)):
        if not range_start <= rank < range_end or row < 0:
            continue
        if row in positive_ids or row in duplicate_ids:
            continue
        if margin is not None and score > positive_score - margin:
            continue
        eligible.append(row)
    return rng.sample(eligible, number) if len(eligible) > number else eligible


def random_fill(pool_vectors: np.ndarray, query_vector: np.ndarray, excluded: set[int], positive_score: float,
                number: int, margin: float | None, rng: random.Random, tries_per_negative: int = 20) -> list[int]:
    """Up to ``number`` random pool rows outside ``excluded`` (and below the margin), by rejection sampling:
    scoring only the sampled rows keeps this cheap on a large pool."""
    chosen: list[int] = []
    for _ in range(number * tries_per_negative):
        if len(chosen) == number or len(excluded) + len(chosen) >= len(pool_vectors):
            break
        row = rng.randrange(len(pool_vectors))
        if row in excluded or row in chosen:
            continue
        if margin is not None and float(pool_vectors[row] @ query_vector) > positive_score - margin:
            continue
        chosen.append(row)
    return chosen


def mine_hard_negatives(encoder: DenseEncoder, rows: list[dict[str, Any]], pool: list[str], range_start: int,
                        range_end: int, number: int, margin: float | None = None, duplicate_threshold: float | None = None,
                        use_ivf: bool = False, seed: int = 42,
                        fill_random: bool = False) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows with ``neg`` filled by mining, and statistics of the run."""
    rng = random.Random(seed)
    # Deduplicate the pool by normalised text; positives join it so their ids are known.
    pool_index: dict[str, int] = {}
    texts: list[str] = []
    for text in pool + [p for row in rows for p in row["pos"]]:
        key = _normalise(text)
        if key not in pool_index:
            pool_index[key] = len(texts)
            texts.append(text)
    pool_vectors = encoder.encode_passages(texts, show_progress=True)
    query_vectors = encoder.encode_queries([row["query"] for row in rows])
    index = build_index(pool_vectors, "ivf" if use_ivf else "flat")
    scores, ids = search_index(index, query_vectors, range_end)

    # Every positive of a query text, over all rows asking it (templated questions: one text, many answers),
    # is kept out of that text's negatives: mined, topped up at random, or in the output row.
    positives_of_text: dict[str, set[int]] = {}
    for row in rows:
        positives_of_text.setdefault(_normalise(row["query"]), set()).update(
            pool_index[_normalise(p)] for p in row["pos"])
    mined, short, filled = [], 0, 0
    for i, row in enumerate(rows):
        own_positive_ids = {pool_index[_normalise(p)] for p in row["pos"]}
        positive_ids = positives_of_text[_normalise(row["query"])]
        positive_vectors = pool_vectors[sorted(own_positive_ids)]
        positive_score = float(np.min(positive_vectors @ query_vectors[i]))  # the weakest positive
        candidate_rows = [int(r) for r in ids[i] if r >= 0]
        similarity_to_pos = pool_vectors[candidate_rows] @ positive_vectors.T if candidate_rows else np.zeros((0, 1))
        duplicates = set() if duplicate_threshold is None else {
            r for r, sims in zip(candidate_rows, similarity_to_pos) if float(sims.max()) >= duplicate_threshold}
        chosen = select_negatives([int(r) for r in ids[i]], [float(s) for s in scores[i]], positive_ids,
                                  positive_score, duplicates, range_start, range_end, number, margin, rng)
        if len(chosen) < number and fill_random:
            # never a positive, a duplicate, a searched candidate already turned down, or one already chosen
            searched = {int(r) for r in ids[i] if r >= 0}
            extra = random_fill(pool_vectors, query_vectors[i], positive_ids | duplicates | searched | set(chosen),
                                positive_score, number - len(chosen), margin, rng)
            filled += len(extra)
            chosen = chosen + extra
        if len(chosen) < number:
            short += 1
        mined.append({"query": row["query"], "pos": row["pos"], "neg": [texts[r] for r in chosen]})
    stats = {"queries": len(rows), "pool_size": len(texts), "queries_short_of_negatives": short,
             "mean_negatives": float(np.mean([len(r["neg"]) for r in mined])),
             "queries_without_negatives": sum(1 for r in mined if not r["neg"]), "random_negatives": filled}
    return mined, stats


def run_mining(args) -> dict[str, Any]:
    from finbert2.run import prepare_output_dir, setup_logging, write_metrics, write_run_config

    output = Path(args.output_file) if args.output_file else Path(args.output_dir) / "train.jsonl"
    if args.output_file and output.exists() and not args.overwrite_output_file:
        raise OutputDirError(f"{output}: exists; pass --overwrite_output_file True to replace it")
    rows = read_queries_with_positives(args.input_file)
    pool = list(iter_corpus(args.candidate_pool)) if args.candidate_pool else []
    lexical = args.model_name_or_path == BM25  # BM25 alone: no encoder
    encoder = None if lexical else DenseEncoder.from_pretrained(
        args.model_name_or_path, query_instruction=args.query_instruction_for_retrieval,
        passage_instruction=args.passage_instruction_for_retrieval, max_length=args.max_length,
        batch_size=args.batch_size, bf16=command_bf16(args))
    if args.output_dir:
        prepare_output_dir(args.output_dir, overwrite=args.overwrite_output_file, clear=True)
        setup_logging(args.output_dir)
        write_run_config(args.output_dir, args, stage="retrieve mine")
    if lexical or args.hybrid:
        mined, stats = mine_with_first_stage(rows, pool, args.range_start, args.range_end, args.negative_number,
                                             encoder, args.seed, args.fill_random)
    else:
        logger.info("prompts: query %r, passage %r", encoder.query_instruction, encoder.passage_instruction)
        mined, stats = mine_hard_negatives(encoder, rows, pool, args.range_start, args.range_end, args.negative_number,
                                           args.margin, args.duplicate_threshold, args.use_faiss_ivf, args.seed,
                                           fill_random=args.fill_random)
    empty = [r for r in mined if not r["neg"]]
    if empty:
        logger.warning("%d queries got no negative (widen range_for_sampling or the pool); they are dropped",
                       len(empty))
    write_jsonl(output, (r for r in mined if r["neg"]))
    logger.info("mined %s -> %s: %s", args.input_file, output, stats)
    if args.output_dir:
        stats = write_metrics(args.output_dir, stats)
    return stats
