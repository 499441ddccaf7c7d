"""Fin-TopicModel: BERTopic over encoder (or TF-IDF/LSA) vectors of financial titles, described by jieba words.

Importing this package is cheap; BERTopic (UMAP/HDBSCAN, numba) loads with
``finbert2.topics.pipeline``.
"""
