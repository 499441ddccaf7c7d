"""Reading and checking everything a topic-model run needs, before any work and without loading BERTopic."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from finbert2.data import TopicDocs, iter_records, read_topic_docs
from finbert2.errors import DataError
from finbert2.topics.args import TopicArguments
from finbert2.topics.embeddings import load_npy_embeddings
from finbert2.topics.plots import CJKFont
from finbert2.topics.text import JiebaWordTokenizer, build_tokenizer


def check_dates(paths: list[str], date_field: str) -> None:
    """Every present date parses (pandas), or ``path:line: ...``."""
    for path in paths:
        if Path(path).suffix.lower() in {".txt", ".text"}:
            continue
        for lineno, obj in iter_records(path):
            value = obj.get(date_field)
            if isinstance(value, str) and value.strip():
                try:
                    pd.Timestamp(value.strip())
                except (ValueError, TypeError):
                    raise DataError(path, lineno, f"field '{date_field}' is not a date: {value!r}") from None


def read_titles(args: TopicArguments) -> TopicDocs:
    """The titles (a seeded sample when ``max_docs``), validated."""
    docs = read_topic_docs(args.train_data, text_field=args.text_field, date_field=args.date_field)
    check_dates(args.train_data, args.date_field)
    if args.max_docs and len(docs.texts) > args.max_docs:
        keep = sorted(random.Random(args.seed).sample(range(len(docs.texts)), args.max_docs))
        docs = TopicDocs(texts=[docs.texts[i] for i in keep], dates=[docs.dates[i] for i in keep])
    if len(docs.texts) <= args.umap_n_neighbors:
        raise DataError(",".join(args.train_data), None,
                        f"{len(docs.texts)} titles; UMAP with {args.umap_n_neighbors} neighbours needs more")
    return docs


@dataclass
class RunInputs:
    docs: TopicDocs
    tokenizer: JiebaWordTokenizer
    font: CJKFont
    npy: np.ndarray | None


def prepare_inputs(args: TopicArguments) -> RunInputs:
    docs = read_titles(args)
    tokenizer = build_tokenizer(args.userdict, args.stopwords, args.min_word_length)
    font = CJKFont(args.font_path)
    npy = load_npy_embeddings(args.embeddings, len(docs.texts)) if args.embeddings else None
    return RunInputs(docs, tokenizer, font, npy)
