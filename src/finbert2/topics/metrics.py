"""Topic model metrics: upstream's cluster scores, topic diversity and NPMI coherence.

- ``cluster_scores``: silhouette, Calinski-Harabasz and Davies-Bouldin (scikit-learn) on the
  space the documents were clustered in; outlier documents (topic -1) are left out by default,
  since -1 is "no topic", not a cluster (upstream's script scored it as one; pass
  ``include_outliers=True`` for that).
- ``topic_diversity``: distinct words among every topic's top-``top_n`` words over
  ``topics * top_n`` (Dieng et al. 2020; upstream's ``calculate_topic_diversity``).
- ``npmi_coherence``: mean over topics of the mean NPMI of every pair of a topic's top words,
  with probabilities from document co-occurrence in the corpus (Bouma 2009; Lau et al. 2014).
  A pair that never co-occurs scores -1, a pair that occurs in every document scores 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import sparse
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

OUTLIER = -1


def cluster_scores(points: np.ndarray, labels: Sequence[int], include_outliers: bool = False,
                   silhouette_sample_size: int | None = 10000, seed: int = 42) -> dict[str, float | None]:
    """Silhouette, Calinski-Harabasz and Davies-Bouldin; ``None`` where undefined (fewer than 2 clusters)."""
    points = np.asarray(points)
    labels = np.asarray(labels)
    if not include_outliers:
        keep = labels != OUTLIER
        points, labels = points[keep], labels[keep]
    n_clusters = len(np.unique(labels))
    if n_clusters < 2 or n_clusters >= len(labels):
        return {"silhouette": None, "calinski_harabasz": None, "davies_bouldin": None}
    # Silhouette is quadratic in documents: sample above silhouette_sample_size (seeded).
    sample = silhouette_sample_size if silhouette_sample_size and len(labels) > silhouette_sample_size else None
    return {
        "silhouette": float(silhouette_score(points, labels, sample_size=sample, random_state=seed)),
        "calinski_harabasz": float(calinski_harabasz_score(points, labels)),
        "davies_bouldin": float(davies_bouldin_score(points, labels)),
    }


def _clean(words: Iterable[str], top_n: int) -> list[str]:
    return [w for w in list(words)[:top_n] if w]  # BERTopic pads short topics with ""


def topic_diversity(topic_words: Sequence[Sequence[str]], top_n: int = 10) -> float | None:
    """Distinct words among the top-``top_n`` words of all topics over ``len(topics) * top_n``."""
    if not topic_words:
        return None
    distinct = {w for words in topic_words for w in _clean(words, top_n)}
    return len(distinct) / (len(topic_words) * top_n)


def npmi_coherence(topic_words: Sequence[Sequence[str]], documents_words: Sequence[Iterable[str]],
                   top_n: int = 10) -> float | None:
    """Mean NPMI coherence of the topics, on document co-occurrence in ``documents_words``.

    ``documents_words`` are the tokenized documents (the same words the topics were built from).
    Words absent from every document are left out of their topic's pairs.
    """
    n_docs = len(documents_words)
    if not topic_words or n_docs == 0:
        return None
    needed = sorted({w for words in topic_words for w in _clean(words, top_n)})
    index = {w: i for i, w in enumerate(needed)}
    rows, cols = [], []
    for d, words in enumerate(documents_words):
        for w in set(words):
            if w in index:
                rows.append(d)
                cols.append(index[w])
    presence = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_docs, len(needed)))
    doc_freq = np.asarray(presence.sum(axis=0)).ravel()
    co_freq = (presence.T @ presence).toarray()

    topic_scores = []
    for words in topic_words:
        ids = [index[w] for w in _clean(words, top_n) if doc_freq[index[w]] > 0]
        pair_scores = []
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                i, j = ids[a], ids[b]
                p_i, p_j, p_ij = doc_freq[i] / n_docs, doc_freq[j] / n_docs, co_freq[i, j] / n_docs
                if p_ij == 0:
                    pair_scores.append(-1.0)
                elif p_ij == 1:
                    pair_scores.append(1.0)
                else:
                    pair_scores.append(math.log(p_ij / (p_i * p_j)) / -math.log(p_ij))
        if pair_scores:
            topic_scores.append(sum(pair_scores) / len(pair_scores))
    return float(np.mean(topic_scores)) if topic_scores else None
