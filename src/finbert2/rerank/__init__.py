"""Fin-Reranker: a cross-encoder (one logit per query-passage pair) as the second stage of retrieval."""
