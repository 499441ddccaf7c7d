"""Data formats shared by every stage: readers that validate, writers that never leave half files."""

from finbert2.data.readers import (
    ClassificationData,
    RetrievalEvalData,
    TopicDocs,
    iter_corpus,
    iter_csv,
    iter_jsonl,
    iter_lines,
    iter_raw_lines,
    iter_records,
    read_classification,
    read_corpus,
    read_retrieval_eval,
    read_retrieval_train,
    read_topic_docs,
)
from finbert2.data.splits import split_heldout
from finbert2.data.writers import atomic_write_text, write_json, write_jsonl

__all__ = [
    "ClassificationData",
    "RetrievalEvalData",
    "TopicDocs",
    "atomic_write_text",
    "iter_corpus",
    "iter_csv",
    "iter_jsonl",
    "iter_lines",
    "iter_raw_lines",
    "iter_records",
    "read_classification",
    "read_corpus",
    "read_retrieval_eval",
    "read_retrieval_train",
    "read_topic_docs",
    "split_heldout",
    "write_json",
    "write_jsonl",
]
