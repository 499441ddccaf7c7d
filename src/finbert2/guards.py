"""Guards against silent failure: a trained model that collapsed, or never left its starting point.

A collapsed encoder maps every text to (nearly) one vector; a collapsed classifier predicts one
class for everything. Both still write a tidy ``metrics.json``, and a loss curve alone does not
show it. Each training stage runs these checks at its end: a hit is a warning in ``run.log`` and
``collapsed: true`` with the reason in ``metrics.json``, which the report shows in red.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger("finbert2.guards")

COLLAPSE_MEAN_COSINE = 0.99  # mean pairwise cosine of passage vectors above which an encoder has collapsed
CHANCE_LOSS_TOLERANCE = 0.02  # a contrastive loss within 2% of ln(passages per query) is still at chance


def mean_pairwise_cosine(vectors: np.ndarray, sample: int = 256, seed: int = 0) -> float:
    """The mean cosine over distinct pairs of (a seeded sample of) rows; 1.0 means all alike."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(vectors) < 2:
        return float("nan")
    if len(vectors) > sample:
        vectors = vectors[np.random.default_rng(seed).choice(len(vectors), sample, replace=False)]
    unit = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    sims = unit @ unit.T
    n = len(unit)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def embedding_collapse(vectors: np.ndarray, threshold: float = COLLAPSE_MEAN_COSINE) -> tuple[float, str | None]:
    """``(mean pairwise cosine, reason or None)`` for a sample of an encoder's passage vectors."""
    cosine = mean_pairwise_cosine(vectors)
    if math.isfinite(cosine) and cosine > threshold:
        return cosine, (f"embedding collapse: passage vectors have mean pairwise cosine {cosine:.4f} "
                        f"(> {threshold}): the encoder maps every text to nearly one vector")
    return cosine, None


def chance_loss_collapse(final_loss: float | None, passages_per_query: int,
                         tolerance: float = CHANCE_LOSS_TOLERANCE) -> str | None:
    """A reason when a contrastive loss ended at InfoNCE's chance level, ln(passages per query).

    There every passage scores alike for every query: the encoder does not rank at all (too few
    steps, or a collapse: a lower learning rate, or the pooling the encoder was pretrained with).
    """
    chance = math.log(passages_per_query) if passages_per_query >= 2 else None
    if final_loss is None or chance is None or final_loss < chance * (1 - tolerance):
        return None
    return (f"chance-level loss: the contrastive loss ended at {final_loss:.3f}, chance level "
            f"ln({passages_per_query}) = {chance:.3f}: the encoder does not tell passages apart")


def prediction_collapse(predicted: np.ndarray, label_names: list[str]) -> str | None:
    """A reason when a single-label classifier predicts one class for every text of a split."""
    predicted = np.asarray(predicted)
    if predicted.ndim != 1 or len(predicted) < 2 or len(label_names) < 2:
        return None
    classes = np.unique(predicted)
    if len(classes) == 1:
        return (f"prediction collapse: the classifier predicts '{label_names[int(classes[0])]}' for all "
                f"{len(predicted)} validation texts (the label prior; try another learning rate or more epochs)")
    return None


def record_collapse(metrics: dict, reasons: list[str | None]) -> dict:
    """Add ``collapsed`` (and the reasons) to ``metrics``, warning in the log for each reason."""
    found = [r for r in reasons if r]
    for reason in found:
        logger.warning(reason)
    metrics["collapsed"] = bool(found)
    if found:
        metrics["collapse_reason"] = "; ".join(found)
    return metrics
