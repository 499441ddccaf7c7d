"""``--alpha auto``: score merges on validation data and keep the best alpha.

Each alpha's merged encoder is scored on validation retrieval (nDCG@10, through the retrieval stage's
own ``dense_evaluation``) and, when a classification file is given, a linear probe: a logistic
regression on the standardized frozen sentence vectors, fitted on a training file when one is given and
scored on the classification file, else macro-F1 by stratified cross-validation on it. (Standardized:
unit-length sentence vectors that sit close together leave a default-regularized regression near the
majority class, so an unscaled probe ranks how spread out the embeddings are, not how separable.) The selection
score is nDCG@10, or the mean of nDCG@10 and the probe's macro-F1 when both are given. The grid always
holds 0 and 1 (the two inputs), so the choice is never worse on it than the better input (unless a
pretraining run's loss bound rules that input out); a tie goes to the larger alpha (more of model A, the
adapted one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from finbert2.errors import ConfigError
from finbert2.merge.weights import Checkpoint, MergePlan, merge_tensors, merged_tokenizer

logger = logging.getLogger("finbert2.merge")

DEFAULT_GRID = tuple(round(i / 10, 1) for i in range(11))
PROBE_FOLDS = 5
CURVE_PLOT = "alpha_curve.png"


def scored_alphas(values: list[float] | None) -> list[float]:
    """The alphas scored: ``values`` (default 0.0, 0.1, ..., 1.0) with both ends added, sorted."""
    grid = set(DEFAULT_GRID if not values else values) | {0.0, 1.0}
    bad = sorted(v for v in grid if not 0.0 <= v <= 1.0)
    if bad:
        raise ConfigError(f"merge: alpha_grid values must be in [0, 1], got {bad}")
    return sorted(grid)


def probe_prompt(prompts: dict[str, str]) -> str:
    """The prefix for classification texts: the folder's ``classification`` prompt, else its
    ``clustering`` one (e5: ``query: ``, its advice for non-retrieval tasks), else none."""
    return prompts.get("classification", prompts.get("clustering", ""))


def read_probe_data(path: str, train_path: str | None = None):
    """The probe's scored rows and, with ``train_path``, its training rows (or None)."""
    from finbert2.data import read_classification

    data = read_classification(path)
    train = read_classification(train_path) if train_path else None
    for name, rows in ((path, data), (train_path, train)):
        if rows is not None and rows.multi_label:
            raise ConfigError(f"{name}: the merge probe takes single-label classification rows")
    labels, counts = np.unique(np.asarray(data.labels), return_counts=True)
    if train is None and (len(labels) < 2 or counts.min() < 2):
        raise ConfigError(f"{path}: the merge probe needs at least 2 labels with at least 2 rows each "
                          f"(got {dict(zip(labels.tolist(), counts.tolist()))})")
    if train is not None:
        trained = set(train.labels)
        if len(trained) < 2:
            raise ConfigError(f"{train_path}: the merge probe needs at least 2 labels to train on")
        unseen = sorted(set(labels.tolist()) - trained)
        if unseen:
            raise ConfigError(f"{path}: labels {unseen} never occur in the probe's training file {train_path}")
    return data, train


def linear_probe(seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))


def probe_macro_f1(vectors: np.ndarray, labels: list[str], seed: int = 0, train_vectors: np.ndarray | None = None,
                   train_labels: list[str] | None = None) -> float:
    """Macro-F1 of a logistic regression on standardized frozen vectors: fitted on ``train_vectors`` and scored on
    ``vectors`` when given, else cross-validated on ``vectors`` (folds: at most 5, at most the smallest class's size)."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    targets = np.asarray(labels)
    if train_vectors is not None:
        predicted = linear_probe(seed).fit(train_vectors, np.asarray(train_labels)).predict(vectors)
    else:
        folds = min(PROBE_FOLDS, int(np.unique(targets, return_counts=True)[1].min()))
        predicted = cross_val_predict(linear_probe(seed), vectors, targets,
                                      cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float(f1_score(targets, predicted, average="macro"))


class AlphaScorer:
    """One encoder whose weights are swapped for each alpha's merge, scored on the validation data."""

    def __init__(self, a: Checkpoint, b: Checkpoint, plan: MergePlan, source: Checkpoint, retrieval_data,
                 probe_data=None, max_length: int = 512, batch_size: int = 32, probe_train=None):
        from finbert2.retrieve.encoder import (DenseEncoder, last_layer_at_cls_only, load_encoder_model,
                                               resolve_prompts, saved_sentence_settings)

        self.a, self.b, self.plan = a, b, plan
        self.retrieval_data, self.probe_data, self.probe_train = retrieval_data, probe_data, probe_train
        # The encoder of the input with the larger vocabulary holds every row the merge writes.
        larger = a if a.vocab_size >= b.vocab_size else b
        model = load_encoder_model(str(larger.folder))
        settings = saved_sentence_settings(str(source.folder))
        pooling = settings.get("pooling", "cls")
        if pooling == "cls":
            last_layer_at_cls_only(model)  # its submodules keep their names: state dicts still load
        self.keys = [k for k in [*plan.shared, *plan.carried] if k.startswith(f"{a.prefix}.")]
        query_prompt, passage_prompt = resolve_prompts(str(source.folder))
        self.probe_prompt = probe_prompt(settings.get("prompts", {}))
        self.encoder = DenseEncoder(model, merged_tokenizer(a, b), pooling=pooling,
                                    normalize=settings.get("normalize", True), query_instruction=query_prompt,
                                    passage_instruction=passage_prompt, max_length=max_length,
                                    batch_size=batch_size)

    def load(self, alpha: float) -> None:
        state = self.a.base_state_dict(merge_tensors(self.a, self.b, self.plan, alpha, self.keys))
        missing, _ = self.encoder.model.load_state_dict(state, strict=False)
        if missing:
            raise ConfigError(f"merge: the merged checkpoint lacks encoder weights {', '.join(missing[:3])}")

    def score(self, alpha: float) -> dict[str, float]:
        from finbert2.retrieve.evaluate import dense_evaluation

        self.load(alpha)
        mean = dense_evaluation(self.encoder, self.retrieval_data)[0]
        point = {"alpha": alpha, "ndcg_at_10": mean["ndcg_at_10"], "recall_at_10": mean["recall_at_10"]}
        if self.probe_data is not None:
            vectors = self.encoder.encode(self.probe_data.texts, prompt=self.probe_prompt)
            train = self.probe_train
            point["probe_macro_f1"] = probe_macro_f1(
                vectors, self.probe_data.labels,
                train_vectors=None if train is None else self.encoder.encode(train.texts, prompt=self.probe_prompt),
                train_labels=None if train is None else train.labels)
            point["score"] = (point["ndcg_at_10"] + point["probe_macro_f1"]) / 2
        else:
            point["score"] = point["ndcg_at_10"]
        logger.info("alpha %.2f: %s", alpha, {k: round(v, 4) for k, v in point.items() if k != "alpha"})
        return point


def best_point(curve: list[dict], loss_bound: float | None = None) -> dict:
    """The highest score; ties go to the larger alpha. With ``loss_bound``, only points whose held-out
    ``mlm_loss`` is below it compete (the merge must keep what the run learned beyond word frequencies);
    when none is, all of them do (the caller reports that the bound was missed)."""
    eligible = [p for p in curve if loss_bound is None or p.get("mlm_loss", float("inf")) < loss_bound]
    return max(eligible or curve, key=lambda p: (p["score"], p["alpha"]))


def plot_curve(curve: list[dict], chosen: float, path: Path, title: str, loss_bound: float | None = None) -> Path:
    """The validation scores against alpha and, when measured, the held-out MLM loss on a second axis
    beside the bound it must stay under."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.6))
    alphas = [p["alpha"] for p in curve]
    lines = []
    for name in ("ndcg_at_10", "probe_macro_f1"):
        if name in curve[0]:
            lines += ax.plot(alphas, [p[name] for p in curve], marker="o", markersize=3, label=name)
    lines.append(ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen alpha {chosen:g}"))
    if all("mlm_loss" in p for p in curve):
        loss_ax = ax.twinx()
        lines += loss_ax.plot(alphas, [p["mlm_loss"] for p in curve], color="tab:red", marker="s", markersize=3,
                              label="held-out MLM loss")
        if loss_bound is not None:
            lines.append(loss_ax.axhline(loss_bound, color="tab:red", linestyle=":",
                                         label=f"unigram bound {loss_bound:.3f}"))
        loss_ax.set_ylabel("held-out MLM loss (nats)")
    ax.set_xlabel("alpha (weight of model A; 0 = model B)")
    ax.set_ylabel("validation score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # below the axes: on two y-axes no corner is free of both sets of lines
    ax.legend(handles=lines, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
