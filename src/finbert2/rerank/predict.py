"""``finbert2 rerank predict``: order each query's passages with a reranker (JSONL in, JSONL out)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from finbert2.data import write_jsonl
from finbert2.data.readers import get_text, get_text_list, iter_jsonl
from finbert2.errors import DataError, OutputDirError
from finbert2.rerank.evaluate import load_rerankers

logger = logging.getLogger("finbert2.rerank")


def read_rerank_requests(path: str | Path) -> list[dict]:
    """Rows ``{query: str, texts: [str]}``; a bad row stops the run as ``path:line: what is wrong``."""
    path = Path(path)
    rows = [{"query": get_text(obj, "query", path, lineno), "texts": get_text_list(obj, "texts", path, lineno)}
            for lineno, obj in iter_jsonl(path)]
    if not rows:
        raise DataError(path, None, "no rows")
    return rows


def run_predict(args) -> int:
    output = Path(args.output_file)
    if output.exists() and not args.overwrite_output_file:
        raise OutputDirError(f"{output}: exists; pass --overwrite_output_file True to replace it")
    rows = read_rerank_requests(args.input_file)
    (scorer,) = load_rerankers([args.model_name_or_path], args.dtype, args.max_length).values()
    answers = []
    for row in rows:
        scores = scorer.score(row["query"], row["texts"], raw=args.raw_scores)
        order = np.argsort(-scores, kind="stable")
        answers.append({"query": row["query"], "ranking": [
            {"index": int(i), "score": float(scores[i]), "text": row["texts"][i]} for i in order]})
    write_jsonl(output, answers)  # written whole at the end: an interrupted run leaves no partial file
    logger.info("reranked %d queries from %s -> %s", len(rows), args.input_file, output)
    return len(rows)
