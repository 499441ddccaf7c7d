"""Classification metrics (scikit-learn), the per-class table and the confusion matrix (JSON + PNG).

Single-label predictions are label ids; multi-label ones are 0/1 indicator matrices. Accuracy is
subset accuracy for multi-label (every label of a text right), as scikit-learn defines it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

from finbert2.data import write_json
from finbert2.errors import FinBERT2Error

logger = logging.getLogger(__name__)


def summary_metrics(y_true, y_pred, num_labels: int) -> dict[str, float]:
    """accuracy, macro/weighted F1 and macro precision/recall (zero_division=0 everywhere)."""
    labels = None if np.ndim(y_true) == 2 else list(range(num_labels))
    precision, recall, _, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
    }


def per_class_table(y_true, y_pred, label_names: Sequence[str]) -> list[dict]:
    """One row per class: precision, recall, F1 and support (true count)."""
    labels = None if np.ndim(y_true) == 2 else list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0)
    return [
        {"label": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
    ]


def confusion(y_true, y_pred, label_names: Sequence[str]) -> dict:
    """Rows are true labels, columns predicted. Multi-label: one 2x2 [[tn, fp], [fn, tp]] per label."""
    if np.ndim(y_true) == 2:
        matrices = multilabel_confusion_matrix(y_true, y_pred)
        return {"labels": list(label_names), "multi_label": True,
                "per_label": {name: m.tolist() for name, m in zip(label_names, matrices)}}
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(label_names))))
    return {"labels": list(label_names), "multi_label": False, "matrix": matrix.tolist()}


def majority_macro_f1(y_true, num_labels: int) -> float:
    """Macro-F1 of always predicting the most frequent class (single-label)."""
    y_true = np.asarray(y_true)
    majority = np.bincount(y_true, minlength=num_labels).argmax()
    return float(f1_score(y_true, np.full_like(y_true, majority), labels=list(range(num_labels)),
                          average="macro", zero_division=0))


def _cjk_font(names: Sequence[str]) -> str | None:
    """A registered font that draws every label (the topic stage's finder), or None."""
    if all(name.isascii() for name in names):
        return None
    try:
        from matplotlib import font_manager

        from finbert2.topics.plots import find_cjk_font, font_charmap, missing_glyphs

        path = find_cjk_font()
        if missing_glyphs("".join(names), font_charmap(path)):
            return None
        font_manager.fontManager.addfont(str(path))
        return font_manager.FontProperties(fname=str(path)).get_name()
    except (ImportError, FinBERT2Error):
        return None


def _drawable(names: Sequence[str], font: str | None) -> list[str]:
    if font or all(name.isascii() for name in names):
        return list(names)
    logger.warning("no font draws the label names; the confusion matrix PNG shows c0, c1, ... (names in the JSON)")
    return [f"c{i}" for i in range(len(names))]


def plot_confusion(cm: dict, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _cjk_font(cm["labels"])
    names = _drawable(cm["labels"], font)
    if cm["multi_label"]:
        matrix = np.array([cm["per_label"][n] for n in cm["labels"]])  # (labels, 2, 2)
        # One row per label: tn fp fn tp counts.
        matrix = matrix.reshape(len(names), 4)
        xticks, yticks, xlabel, ylabel = ["tn", "fp", "fn", "tp"], names, "", "label"
    else:
        matrix = np.array(cm["matrix"])
        xticks, yticks, xlabel, ylabel = names, names, "predicted", "true"
    size = max(4.0, 0.5 * max(matrix.shape) + 2.5)
    with plt.rc_context({"font.family": [font, "sans-serif"]} if font else {}):
        fig, ax = plt.subplots(figsize=(size, size * 0.85))
        _draw(fig, ax, matrix, xticks, yticks, xlabel, ylabel, title)
        path = Path(path)
        fig.savefig(path, dpi=120)  # inside the context: text is laid out with the font at draw time
    plt.close(fig)
    return path


def _draw(fig, ax, matrix, xticks, yticks, xlabel, ylabel, title) -> None:
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    rotate = len(xticks) > 4
    ax.set_xticks(range(len(xticks)), labels=xticks, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(len(yticks)), labels=yticks)
    threshold = matrix.max() / 2 if matrix.size else 0
    if matrix.size <= 400:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()


def write_split_report(output_dir: str | Path, split: str, y_true, y_pred, label_names: Sequence[str]) -> dict:
    """Write ``classification_report_{split}.json`` and ``confusion_matrix_{split}.{json,png}``.

    Returns the summary metrics prefixed with ``{split}_`` (e.g. ``test_macro_f1``).
    """
    output_dir = Path(output_dir)
    summary = summary_metrics(y_true, y_pred, len(label_names))
    write_json(output_dir / f"classification_report_{split}.json",
               {"split": split, **summary, "per_class": per_class_table(y_true, y_pred, label_names)})
    cm = confusion(y_true, y_pred, label_names)
    write_json(output_dir / f"confusion_matrix_{split}.json", cm)
    plot_confusion(cm, output_dir / f"confusion_matrix_{split}.png", f"{split} ({len(y_true)} texts)")
    return {f"{split}_{key}": value for key, value in summary.items()}
