"""Topic-model metrics: scikit-learn agreement on fixed labels, diversity and NPMI by hand (no numba here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from finbert2.topics.metrics import cluster_scores, npmi_coherence, topic_diversity


@pytest.fixture
def clustered_points():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 6.0, 6.0]])
    points = np.vstack([c + rng.normal(scale=0.8, size=(30, 3)) for c in centres])
    labels = np.repeat([0, 1, 2], 30)
    labels[::10] = -1  # every tenth point is an outlier
    return points, labels


def test_cluster_scores_match_sklearn_without_outliers(clustered_points):
    points, labels = clustered_points
    scores = cluster_scores(points, labels)
    keep = labels != -1
    assert scores["silhouette"] == pytest.approx(silhouette_score(points[keep], labels[keep]))
    assert scores["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(points[keep], labels[keep]))
    assert scores["davies_bouldin"] == pytest.approx(davies_bouldin_score(points[keep], labels[keep]))
    assert scores["silhouette"] > 0.5  # well separated blobs


def test_cluster_scores_with_outliers_as_a_cluster_match_upstream(clustered_points):
    points, labels = clustered_points
    scores = cluster_scores(points, labels, include_outliers=True)
    assert scores["silhouette"] == pytest.approx(silhouette_score(points, labels))
    assert scores["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(points, labels))
    assert scores["davies_bouldin"] == pytest.approx(davies_bouldin_score(points, labels))
    assert scores["silhouette"] < cluster_scores(points, labels)["silhouette"]


def test_cluster_scores_undefined_for_one_cluster():
    points = np.arange(12, dtype=float).reshape(6, 2)
    assert cluster_scores(points, [0, 0, 0, -1, 0, -1]) == {
        "silhouette": None, "calinski_harabasz": None, "davies_bouldin": None}


def test_topic_diversity_by_hand():
    topics = [["央行", "降准", "利率"], ["央行", "芯片", "半导体"], ["白酒", "芯片", ""]]
    # distinct non-empty words: 央行 降准 利率 芯片 半导体 白酒 = 6, over 3 topics x top 3
    assert topic_diversity(topics, top_n=3) == pytest.approx(6 / 9)
    # top 2 only: 央行 降准 | 央行 芯片 | 白酒 芯片 -> 4 distinct of 6
    assert topic_diversity(topics, top_n=2) == pytest.approx(4 / 6)
    assert topic_diversity([["a", "b"], ["a", "b"]], top_n=2) == pytest.approx(0.5)
    assert topic_diversity([], top_n=10) is None


def test_npmi_by_hand():
    docs = [["央行", "降准"], ["央行", "降准", "利率"], ["芯片"], ["央行", "芯片"]]
    n = 4
    # topic 1: (央行, 降准): p=3/4, 2/4, joint 2/4
    p_a, p_b, p_ab = 3 / n, 2 / n, 2 / n
    npmi_ab = math.log(p_ab / (p_a * p_b)) / -math.log(p_ab)
    # topic 2: (降准, 芯片) never together -> -1; (降准, 利率): 2/4, 1/4, joint 1/4; (芯片, 利率) -> -1
    p_c, p_d, p_cd = 2 / n, 1 / n, 1 / n
    npmi_cd = math.log(p_cd / (p_c * p_d)) / -math.log(p_cd)
    topic2 = (-1.0 + npmi_cd + -1.0) / 3
    expected = (npmi_ab + topic2) / 2
    got = npmi_coherence([["央行", "降准"], ["降准", "芯片", "利率"]], docs, top_n=10)
    assert got == pytest.approx(expected)
    assert npmi_ab == pytest.approx(math.log(4 / 3) / math.log(2))  # sanity of the hand computation


def test_npmi_limits_and_top_n():
    docs = [["a", "b"], ["a", "b"], ["c"]]
    assert npmi_coherence([["a", "b"]], docs) == pytest.approx(1.0)  # always together
    assert npmi_coherence([["a", "c"]], docs) == pytest.approx(-1.0)  # never together
    # top_n=2 ignores the third word; an unseen word is left out of the pairs
    assert npmi_coherence([["a", "b", "c"]], docs, top_n=2) == pytest.approx(1.0)
    assert npmi_coherence([["a", "b", "zzz"]], docs) == pytest.approx(1.0)
    assert npmi_coherence([], docs) is None
