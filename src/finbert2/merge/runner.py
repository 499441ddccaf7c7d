"""Merge two checkpoints into a model folder every later stage loads; ``merge_with_start`` for pretraining runs.

The folder holds the merged ``model.safetensors`` (in the key layout with the head when either input
has one, so ``AutoModelForMaskedLM`` and ``AutoModel`` both load it), ``config.json``, the tokenizer of
the input with the larger vocabulary, the sentence-transformers files (pooling, normalisation,
prompts) of model A (of model B when A has none), ``run_config.json``, ``run.log`` (command line),
``alpha_curve.png`` (auto) and, last, ``metrics.json``. It is written beside the target and renamed
into place only when complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from finbert2.data.writers import write_json
from finbert2.errors import ConfigError, OutputDirError
from finbert2.merge.select import CURVE_PLOT, AlphaScorer, best_point, plot_curve, read_probe_data, scored_alphas
from finbert2.merge.weights import (WEIGHTS_FILE, Checkpoint, MergePlan, check_same_vocabulary, merge_tensors,
                                    merged_tokenizer, plan_merge, read_checkpoints)
from finbert2.pretrained.folders import staged_folder
from finbert2.retrieve.encoder import ST_FILES
from finbert2.run import METRICS_FILE, is_finished_run, write_metrics

logger = logging.getLogger("finbert2.merge")

AUTO = "auto"


def parse_alpha(value) -> float | str | None:
    """``"auto"``, a float in [0, 1], or None for ``"none"``/None (``--merge_with_start``'s values)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"merge: alpha must be auto, none or a number in [0, 1], got {value!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"merge: alpha must be in [0, 1], got {value!r}")
    return alpha


def sentence_source(a: Checkpoint, b: Checkpoint) -> Checkpoint:
    """The input whose sentence-transformers settings the merge keeps: A's, else B's."""
    return a if (a.folder / "modules.json").is_file() or not (b.folder / "modules.json").is_file() else b


def copy_sentence_files(source: Path, folder: Path) -> None:
    """The sentence-transformers files and module folders ``modules.json`` names, copied unchanged."""
    if not (source / "modules.json").is_file():
        return
    for name in ST_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    for module in json.loads((source / "modules.json").read_text(encoding="utf-8")):
        path = module.get("path") or ""
        if path and (source / path).is_dir():
            shutil.copytree(source / path, folder / path)


def write_model_folder(folder: Path, a: Checkpoint, b: Checkpoint, plan: MergePlan, alpha: float) -> None:
    tensors = merge_tensors(a, b, plan, alpha)
    with_head = a.has_head_layout or b.has_head_layout
    if not with_head:
        tensors = a.base_state_dict(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config_source = a if a.has_head_layout or not with_head else b  # its architectures entry names the head
    write_json(folder / "config.json", {**config_source.config, "vocab_size": max(a.vocab_size, b.vocab_size)})
    merged_tokenizer(a, b).save_pretrained(folder)
    copy_sentence_files(sentence_source(a, b).folder, folder)


def check_output_dir(output_dir: Path, overwrite: bool, inputs: list[Path]) -> None:
    resolved = output_dir.resolve()
    for folder in inputs:
        if resolved == folder.resolve():
            raise ConfigError(f"{output_dir}: is an input of the merge; choose another output folder")
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise OutputDirError(f"{output_dir}: exists and is not a folder")
    if is_finished_run(output_dir):
        if not overwrite:
            raise OutputDirError(f"{output_dir}: holds a finished run ({METRICS_FILE}); pass --overwrite_output_dir "
                                 "True to replace it, or choose another --output_dir")
    elif any(output_dir.iterdir()):
        raise OutputDirError(f"{output_dir}: exists and is not empty; choose another output folder")


@dataclass
class Evaluation:
    """What ``auto`` scores on: a retrieval folder (required) and a classification file (optional)."""

    retrieval_data: str | None = None
    retrieval_split: str = "test"
    classification_data: str | None = None
    classification_train: str | None = None  # the probe's training rows (else it cross-validates on the data)
    alphas: list[float] | None = None
    max_length: int = 512
    batch_size: int = 32
    # Retrieval scores ({"ndcg_at_10", "recall_at_10"}) the caller already measured on the same data and length:
    # 1.0 for model A as saved, 0.0 for model B. Used instead of encoding again when that alpha's merge is exactly
    # that model (0.0 only without grown rows, which come from A) and no classification probe joins the score.
    known: dict[float, dict[str, float]] | None = None
    # A pretraining run's held-out MLM loss of a merge: called with the merged tensors (model A's key layout, head
    # included) and returning nats. Measured at every alpha scored (at the chosen one for a fixed alpha); with
    # ``loss_bound`` (the corpus's unigram cross-entropy on the same masked tokens) auto only chooses among alphas
    # below it.
    held_out_loss: Callable[[dict], float] | None = None
    loss_bound: float | None = None


def known_point(evaluation: Evaluation, alpha: float, plan: MergePlan, probe) -> dict | None:
    """The curve point for ``alpha`` from ``evaluation.known`` when that alpha's merge is exactly the model it was
    measured on; None when it must be scored."""
    known = (evaluation.known or {}).get(alpha)
    if known is None or probe is not None or (alpha == 0.0 and plan.grown) or alpha not in (0.0, 1.0):
        return None
    point = {"alpha": alpha, "ndcg_at_10": known["ndcg_at_10"], "recall_at_10": known["recall_at_10"],
             "score": known["ndcg_at_10"], "measured_by": "the run"}
    if "mlm_loss" in known:
        point["mlm_loss"] = known["mlm_loss"]
    logger.info("alpha %.2f: %s (the run's own validation score of that model)", alpha,
                {k: round(v, 4) for k, v in point.items() if isinstance(v, float) and k != "alpha"})
    return point


def with_held_out_loss(point: dict, a: Checkpoint, b: Checkpoint, plan: MergePlan, evaluation: Evaluation) -> dict:
    """``point`` with ``mlm_loss``, the held-out MLM loss of the merge at its alpha, when the caller measures one."""
    if evaluation.held_out_loss is not None and "mlm_loss" not in point:
        point["mlm_loss"] = round(float(evaluation.held_out_loss(merge_tensors(a, b, plan, point["alpha"]))), 6)
        logger.info("alpha %.2f: held-out MLM loss %.4f", point["alpha"], point["mlm_loss"])
    return point


def selection_rule(probe, evaluation: Evaluation) -> str:
    rule = "mean of ndcg_at_10 and probe_macro_f1" if probe is not None else "ndcg_at_10"
    if evaluation.held_out_loss is not None and evaluation.loss_bound is not None:
        rule += " among alphas whose held-out MLM loss is below the unigram bound"
    return rule


def merge_checkpoints(model_a: str, model_b: str, output_dir: str | Path, alpha, evaluation: Evaluation | None = None,
                      overwrite: bool = False, on_start=None) -> dict:
    """Merge ``alpha * model_a + (1 - alpha) * model_b`` into ``output_dir``; ``alpha="auto"`` picks it on
    ``evaluation``. Everything is validated before anything is written. ``on_start(staging_folder)`` runs
    once the output is being written (the command line logs and records its arguments there).
    Returns the metrics written to ``metrics.json``."""
    alpha = parse_alpha(alpha)
    if alpha is None:
        raise ConfigError("merge: give an alpha in [0, 1] or auto")
    evaluation = evaluation or Evaluation()
    a, b = read_checkpoints(model_a, model_b)
    plan = plan_merge(a, b)
    check_same_vocabulary(a, b)
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite, [a.folder, b.folder])
    retrieval = probe = probe_train = None
    if alpha == AUTO:
        from finbert2.data import read_retrieval_eval

        if not evaluation.retrieval_data:
            raise ConfigError("merge: alpha auto needs --eval_retrieval_data (a corpus/queries/qrels folder)")
        retrieval = read_retrieval_eval(evaluation.retrieval_data, evaluation.retrieval_split)
        probe, probe_train = (read_probe_data(evaluation.classification_data, evaluation.classification_train)
                              if evaluation.classification_data else (None, None))
        grid = scored_alphas(evaluation.alphas)
    report = plan.report()
    logger.info("merging %s (A) and %s (B): %d tensors interpolated, %d carried from one input, %d grown",
                a.folder, b.folder, report["merged_tensors"], len(plan.carried), len(plan.grown))
    for key, side in plan.carried.items():
        logger.info("carried from %s: %s", side, key)
    for key, grown in plan.grown.items():
        logger.info("grown rows %d-%d of %s taken from %s", grown["rows"][0], grown["rows"][1] - 1, key, grown["from"])

    with staged_folder(output_dir) as staging:
        if on_start is not None:
            on_start(staging)
        metrics: dict = {"model_a": str(model_a), "model_b": str(model_b)}
        if alpha == AUTO:
            scorer = AlphaScorer(a, b, plan, sentence_source(a, b), retrieval, probe,
                                 max_length=evaluation.max_length, batch_size=evaluation.batch_size,
                                 probe_train=probe_train)
            curve = [with_held_out_loss(known_point(evaluation, value, plan, probe) or scorer.score(value),
                                        a, b, plan, evaluation) for value in grid]
            chosen = best_point(curve, evaluation.loss_bound)
            alpha = chosen["alpha"]
            by_alpha = {p["alpha"]: p for p in curve}
            metrics.update({
                "alpha_mode": AUTO, "alpha": alpha, "selected_by": selection_rule(probe, evaluation),
                **{k: v for k, v in chosen.items() if k != "alpha"},
                "model_a_ndcg_at_10": by_alpha[1.0]["ndcg_at_10"], "model_b_ndcg_at_10": by_alpha[0.0]["ndcg_at_10"],
                "eval_retrieval_data": evaluation.retrieval_data, "eval_split": evaluation.retrieval_split,
                "eval_queries": len(retrieval.qrels), "eval_documents": len(retrieval.corpus),
                "eval_classification_data": evaluation.classification_data,
                "eval_classification_train": evaluation.classification_train if probe is not None else None,
                "alpha_curve": curve,
            })
            plot_curve(curve, alpha, staging / CURVE_PLOT, f"merge {Path(str(model_a)).name} with {Path(str(model_b)).name}",
                       evaluation.loss_bound)
        else:
            metrics.update(with_held_out_loss({"alpha_mode": "fixed", "alpha": alpha}, a, b, plan, evaluation))
        if "mlm_loss" in metrics and evaluation.loss_bound is not None:
            metrics["mlm_loss_bound"] = evaluation.loss_bound
            metrics["mlm_loss_below_bound"] = round(evaluation.loss_bound - metrics["mlm_loss"], 6)
            if metrics["mlm_loss"] >= evaluation.loss_bound:
                logger.warning("the merge at alpha %g has a held-out MLM loss of %.4f, not below the unigram bound "
                               "%.4f: no %s alpha keeps what the run learned beyond word frequencies", alpha,
                               metrics["mlm_loss"], evaluation.loss_bound, "scored" if metrics["alpha_mode"] == AUTO
                               else "such")
        write_model_folder(staging, a, b, plan, alpha)
        metrics.update(report)
        metrics = write_metrics(staging, metrics)
        if output_dir.exists():  # an overwrite: the finished run it replaces goes only now
            shutil.rmtree(output_dir)
    logger.info("merged at alpha %g into %s", alpha, output_dir)
    return metrics


def merge_with_start(model_dir: str | Path, start_dir: str | Path, out_dir: str | Path, alpha,
                     eval_retrieval_data: str | None = None, eval_classification_data: str | None = None,
                     eval_classification_train: str | None = None,
                     eval_split: str = "test", alpha_grid: list[float] | None = None, max_length: int = 512,
                     batch_size: int = 32, overwrite: bool = False,
                     known_scores: dict[float, dict[str, float]] | None = None,
                     held_out_loss: Callable[[dict], float] | None = None, loss_bound: float | None = None) -> dict:
    """Merge a continued-pretraining run's encoder with the model it started from (``--merge_with_start``).

    Contract for the pretraining stages:

    - ``model_dir``: the finished run's saved model folder (model A, the adapted one; its MLM head is
      carried into the merge unchanged, as the start has none or its own). ``start_dir``: the
      run's ``model_name_or_path`` (model B), a folder or hub id. Same architecture; a vocabulary
      the run grew is fine (the new rows come from the run). A mismatch raises ``ConfigError``.
    - ``alpha``: ``"auto"``, ``"none"``/None (returns ``{}``, writes nothing) or a float in [0, 1]
      (strings accepted, as ``--merge_with_start`` gives them): ``alpha * model + (1 - alpha) *
      start``; 1 keeps the run's model, 0 the start. ``auto`` scores ``alpha_grid`` (default 0.0,
      0.1, ..., 1.0, both ends always included) on ``eval_retrieval_data`` (a corpus / queries /
      qrels folder, ``eval_split`` naming its queries; required for auto) by nDCG@10, and, with
      ``eval_classification_data`` (``{"text", "label"}`` rows), by the mean of nDCG@10 and a
      frozen-vector logistic-regression probe's macro-F1 (fitted on ``eval_classification_train`` when
      given, else cross-validated); ties go to the larger alpha.
    - ``held_out_loss``: the run's held-out MLM loss of a merge (called with the merged tensors, model A's key
      layout), recorded as ``mlm_loss`` at every alpha scored (at the alpha given when fixed); with
      ``loss_bound`` (the corpus's unigram cross-entropy on the same masked tokens) auto chooses only among
      the alphas below it, and falls back to all of them, with a warning, when none is.
    - ``out_dir``: a new (or empty) folder, not ``model_dir``: the merged model (loads with
      ``AutoModel``, ``AutoModelForMaskedLM`` and ``SentenceTransformer``; the run's prompts and
      pooling), ``metrics.json`` and, for auto, ``alpha_curve.png``. Written aside and renamed into
      place when complete; an existing finished folder only with ``overwrite``.
    - Returns the metrics also written to ``out_dir/metrics.json``: ``alpha``, ``alpha_mode``,
      ``merged_tensors``, ``carried_tensors`` {key: "A"|"B"}, ``grown_rows`` {key: {"from", "rows":
      [first, end)}} and, for auto, ``ndcg_at_10`` (and ``probe_macro_f1``) at the chosen alpha,
      ``model_a_ndcg_at_10`` / ``model_b_ndcg_at_10`` (the run's model and the start), ``alpha_curve``
      (one dict per alpha). Prefix them (e.g. ``merge_``) to put them in the run's own metrics.
      Logs go to the caller's logging setup (the run's ``run.log``).
    """
    alpha = parse_alpha(alpha)
    if alpha is None:
        return {}
    evaluation = Evaluation(retrieval_data=eval_retrieval_data, retrieval_split=eval_split,
                            classification_data=eval_classification_data,
                            classification_train=eval_classification_train, alphas=alpha_grid,
                            max_length=max_length, batch_size=batch_size, known=known_scores,
                            held_out_loss=held_out_loss, loss_bound=loss_bound)
    return merge_checkpoints(str(model_dir), str(start_dir), out_dir, alpha, evaluation, overwrite=overwrite)
