"""Fine-tune an encoder for sequence classification (binary, multi-class, multi-label) with the HF Trainer.

    sh Fin-labeler/runclassify.sh configs/classify/tiny.yaml --output_dir runs/classify
    finbert2 classify train configs/classify/base.yaml --model_name_or_path valuesimplex-ai-lab/FinBERT2-base \
        --train_data train.jsonl --eval_data dev.jsonl --test_data test.jsonl --output_dir runs/sc2

Model selection is honest: the best checkpoint, early stopping and the multi-label threshold are
chosen on the validation split only (given, or carved from train, stratified); the test split is
scored once, at the end. The output folder loads with ``AutoModelForSequenceClassification`` (a
``--pooling mean`` one with ``SequenceClassifier.from_pretrained``, see ``finbert2.classify.pooling``).
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from finbert2.classify.args import DataArguments
from finbert2.classify.data import PadCollator, class_weights, encode_split, label_targets, load_splits, pool_by_owner
from finbert2.classify.inference import CONFIG_KEY, Predictions, SequenceClassifier
from finbert2.classify.longtext import LongTextSettings
from finbert2.classify.metrics import majority_macro_f1, summary_metrics, write_split_report
from finbert2.cache import cache_dir
from finbert2.classify.pooling import (
    cached_classifier_inputs,
    check_mean_pooling_supported,
    classifier_class,
    default_pooling,
    encoder_digest,
    fit_probe,
    probe_logits,
    set_head_from_probe,
)
from finbert2.data import write_jsonl
from finbert2.errors import ConfigError
from finbert2.guards import prediction_collapse, record_collapse
from finbert2.modeling import ModelArguments, load_model, model_config, tokenizer_for
from finbert2.run import RunArguments, peak_memory_mb, prepare_output_dir, setup_logging, write_metrics, write_run_config
from finbert2.training import checkpoint_step, plot_loss_curves, resume_checkpoint, standard_callbacks

logger = logging.getLogger("finbert2.classify")


def make_compute_metrics(owners: np.ndarray, targets: np.ndarray, num_labels: int, multi_label: bool,
                         threshold: float):
    """Trainer ``compute_metrics`` on the validation split: window logits pooled per text first."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        pooled = pool_by_owner(np.asarray(logits, dtype=np.float32), owners, len(targets))
        if multi_label:
            predicted = (1 / (1 + np.exp(-pooled)) >= threshold).astype(np.int64)
        else:
            predicted = pooled.argmax(axis=-1)
        return summary_metrics(targets, predicted, num_labels)

    return compute_metrics


def make_weighted_loss(weights: torch.Tensor, multi_label: bool):
    """A ``Trainer(compute_loss_func=...)`` loss: class-weighted cross-entropy, or BCE with ``pos_weight``."""

    def loss_func(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        if multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype), pos_weight=weights.to(logits.device))
        return torch.nn.functional.cross_entropy(logits, labels, weight=weights.to(logits.device, logits.dtype))

    return loss_func


def tune_threshold(probabilities: np.ndarray, targets: np.ndarray, num_labels: int) -> tuple[float, float]:
    """The threshold in 0.05..0.95 with the best macro-F1 (ties: closest to 0.5)."""
    best = (0.5, -1.0)
    for threshold in sorted(np.round(np.arange(0.05, 0.96, 0.05), 2), key=lambda t: abs(t - 0.5)):
        score = summary_metrics(targets, (probabilities >= threshold).astype(np.int64), num_labels)["macro_f1"]
        if score > best[1]:
            best = (float(threshold), score)
    return best


def metric_name(training_args: TrainingArguments) -> str:
    """``metric_for_best_model`` without the Trainer's ``eval_`` prefix (the key of ``summary_metrics``)."""
    return (training_args.metric_for_best_model or "loss").removeprefix("eval_")


def start_better_than_best(initial: dict[str, float], best_metric: float | None,
                           training_args: TrainingArguments) -> bool:
    """Whether the start's validation metric beats the best evaluated checkpoint's (strictly: a tie keeps the
    fine-tuned model). False when the metric is not one the start was scored on (e.g. the loss)."""
    start = initial.get(metric_name(training_args))
    if start is None or best_metric is None:
        return False
    return start > best_metric if training_args.greater_is_better is not False else start < best_metric


def prediction_rows(texts, gold, predictions: Predictions) -> list[dict]:
    probabilities = predictions.probabilities
    return [
        {"text": text, "label": label, "prediction": predicted,
         "probabilities": {name: round(float(p), 6) for name, p in zip(predictions.label_names, probs)}}
        for text, label, predicted, probs in zip(texts, gold, predictions.labels(), probabilities)
    ]


def initialise_head_from_probe(model, tokenizer, train_set, num_labels: int, multi_label: bool,
                               data_args: DataArguments, training_args, scored: dict) -> dict:
    """Fit a logistic regression on the frozen classifier-layer inputs of the training windows and start the head
    from it; returns the probe's scores on each ``scored`` split (``{"eval": (encoded, targets), "test": ...}``) as
    ``probe_<split>_*``: the linear-probe (LP) baseline. The validation scores equal the fine-tuning run's
    untrained row; the test scores are only recorded, never used for a choice."""
    pad_id = tokenizer.pad_token_id or 0
    started = time.perf_counter()
    # seeds and reruns from the same encoder share the frozen features (the slow part on a CPU)
    cache = cache_dir() / "classifier_features" if data_args.probe_feature_cache else None
    model_key = encoder_digest(model) if cache is not None else ""
    batch_size = training_args.per_device_eval_batch_size
    train_features = cached_classifier_inputs(model, train_set.input_ids, pad_id, batch_size, cache, model_key)
    window_targets = train_set.targets[train_set.owners]
    if not multi_label:
        window_targets = window_targets.astype(np.int64)
    probe = fit_probe(train_features, window_targets, num_labels, multi_label, data_args.probe_c, training_args.seed)
    set_head_from_probe(model, probe, num_labels, multi_label)
    scores = {}
    for split, (encoded, targets) in scored.items():
        features = cached_classifier_inputs(model, encoded.input_ids, pad_id, batch_size, cache, model_key)
        logits = pool_by_owner(probe_logits(probe, features, num_labels, multi_label), encoded.owners, len(targets))
        predicted = Predictions([str(i) for i in range(num_labels)], multi_label, data_args.threshold,
                                logits).predicted()
        scores.update({f"probe_{split}_{k}": v for k, v in summary_metrics(targets, predicted, num_labels).items()})
    logger.info("head initialised from a logistic-regression probe (C=%g) on %d frozen training features in %.1f s: "
                "%s", data_args.probe_c, len(train_features), time.perf_counter() - started,
                {k: round(v, 4) for k, v in scores.items()})
    return scores


def run_train(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
              run_args: RunArguments) -> dict:
    started = time.perf_counter()
    # ---- validate everything before touching output_dir
    if training_args.load_best_model_at_end and training_args.eval_strategy == "no":
        raise ConfigError("classify: load_best_model_at_end needs eval_strategy steps or epoch")
    splits = load_splits(
        data_args.train_data, data_args.eval_data, data_args.test_data, text_field=data_args.text_field,
        label_field=data_args.label_field, label_names=data_args.label_list, multi_label=data_args.multi_label,
        validation_split_percentage=data_args.validation_split_percentage, seed=training_args.seed,
    )
    tokenizer = tokenizer_for(model_args)
    settings = LongTextSettings(**data_args.long_text_settings())
    label_names, multi_label = splits.label_names, splits.multi_label
    num_labels = len(label_names)

    output_dir = prepare_output_dir(training_args.output_dir, overwrite=run_args.overwrite_output_dir, clear=True)
    setup_logging(output_dir)
    write_run_config(output_dir, model_args, data_args, training_args, run_args, stage="classify train",
                     extra={"label_names": label_names, "multi_label": multi_label,
                            "validation_carved_from_train": splits.validation_carved})
    logger.info("task: %s, %d labels %s; %d train / %d validation / %d test rows",
                "multi-label" if multi_label else ("binary" if num_labels == 2 else "multi-class"), num_labels,
                label_names, len(splits.train.texts), len(splits.validation.texts),
                len(splits.test.texts) if splits.test else 0)

    pooling = data_args.pooling or default_pooling(model_args.model_name_or_path)
    if pooling == "mean" and model_args.model_name_or_path:
        check_mean_pooling_supported(model_args.model_name_or_path,
                                     model_config(model_args.model_name_or_path, model_args.trust_remote_code).model_type)
    set_seed(training_args.seed)  # the new head (and a from-scratch encoder) start from the seed
    model = load_model(
        classifier_class(pooling, AutoModelForSequenceClassification), model_args, tokenizer,
        num_labels=num_labels, id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and settings.max_length > max_positions:
        raise ConfigError(f"classify: max_length {settings.max_length} exceeds the model's {max_positions} positions")
    # Stored in config.json, so inference applies the same long-text handling and threshold.
    setattr(model.config, CONFIG_KEY, {"long_text": settings.to_dict(), "threshold": data_args.threshold,
                                       "pooling": pooling})
    logger.info("the head reads %s", "the masked mean of the last layer" if pooling == "mean"
                else f"{type(model).__name__}'s own pooling ([CLS])")

    train_set = encode_split(tokenizer, splits.train, label_names, settings)
    val_set = encode_split(tokenizer, splits.validation, label_names, settings)
    val_targets = label_targets(splits.validation, label_names)
    logger.info("%d training inputs from %d texts (%s, max_length %d)", len(train_set), len(splits.train.texts),
                settings.truncation, settings.max_length)
    probe_metrics = {}
    if data_args.head_init == "probe":
        scored = {"eval": (val_set, val_targets)}
        if splits.test is not None:  # the LP row's test score: the probe alone, before any fine-tuning
            scored["test"] = (encode_split(tokenizer, splits.test, label_names, settings),
                              label_targets(splits.test, label_names))
        probe_metrics = initialise_head_from_probe(model, tokenizer, train_set, num_labels, multi_label, data_args,
                                                   training_args, scored)

    callbacks = standard_callbacks(output_dir, run_args.skip_nonfinite_steps)  # loss log + NaN/inf guard
    if data_args.early_stopping_patience > 0 and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
        # a resumed run keeps the patience count (and stop flag) its checkpoint saved
        training_args.restore_callback_states_from_checkpoint = True
    loss_func = None
    if data_args.class_weighting:
        weights = class_weights(label_targets(splits.train, label_names), num_labels, multi_label)
        logger.info("class weights: %s", dict(zip(label_names, np.round(weights.numpy(), 3).tolist())))
        loss_func = make_weighted_loss(weights, multi_label)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=PadCollator(tokenizer.pad_token_id or 0),
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(val_set.owners, val_targets, num_labels, multi_label,
                                             data_args.threshold),
        compute_loss_func=loss_func,
        callbacks=callbacks,
    )
    if loss_func is not None:
        trainer.loss_is_scaled_for_ga = False  # our loss is a per-batch mean (public Trainer attribute)
    # The untrained starting model's row (encoder + a fresh head): what fine-tuning must improve on.
    initial_pred = SequenceClassifier(model, tokenizer, settings, data_args.threshold).predict(
        splits.validation.texts, training_args.per_device_eval_batch_size)
    initial = summary_metrics(val_targets, initial_pred.predicted(), num_labels)
    logger.info("validation before fine-tuning: %s", {k: round(v, 4) for k, v in initial.items()})
    # the start's weights, a model-selection candidate (restored below when validation prefers it)
    start_state = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}  # off the GPU
                   if data_args.keep_start_if_better and training_args.load_best_model_at_end else None)
    model.train()
    train_result = trainer.train(resume_from_checkpoint=resume_checkpoint(output_dir,
                                                                          training_args.resume_from_checkpoint))
    best_checkpoint = trainer.state.best_model_checkpoint
    kept_start = start_state is not None and start_better_than_best(initial, trainer.state.best_metric, training_args)
    if kept_start:
        trainer.model.load_state_dict(start_state)
        best_checkpoint = None
        logger.warning("validation %s of the start (%.4f) beats every fine-tuned checkpoint (best %.4f): the start "
                       "is kept (--keep_start_if_better)", training_args.metric_for_best_model,
                       initial[metric_name(training_args)], trainer.state.best_metric)
    del start_state

    # ---- everything below uses the selected (best-on-validation) model
    classifier = SequenceClassifier(trainer.model, tokenizer, settings, data_args.threshold)
    val_pred = classifier.predict(splits.validation.texts, training_args.per_device_eval_batch_size)
    threshold = data_args.threshold
    if multi_label and data_args.tune_threshold:
        threshold, score = tune_threshold(val_pred.probabilities, val_targets, num_labels)
        logger.info("threshold tuned on validation: %.2f (macro-F1 %.4f)", threshold, score)
        classifier.threshold = val_pred.threshold = threshold
    setattr(trainer.model.config, CONFIG_KEY, {"long_text": settings.to_dict(), "threshold": threshold,
                                               "pooling": pooling})
    trainer.save_model(str(output_dir))  # model + config (label maps, long-text settings) + tokenizer

    metrics: dict = {
        "train_loss": train_result.training_loss,
        "train_runtime": train_result.metrics.get("train_runtime"),
        "train_samples_per_second": train_result.metrics.get("train_samples_per_second"),
        "train_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "num_labels": num_labels,
        "train_rows": len(splits.train.texts),
        "eval_rows": len(splits.validation.texts),
        "threshold": threshold if multi_label else None,
        "best_checkpoint_step": checkpoint_step(best_checkpoint) if best_checkpoint else None,
        "kept": "start" if kept_start else "fine-tuned",
    }
    metrics.update({f"initial_eval_{k}": v for k, v in initial.items()})
    metrics.update(probe_metrics)
    metrics["pooling"], metrics["head_init"] = pooling, data_args.head_init
    if not multi_label:
        metrics["eval_majority_macro_f1"] = majority_macro_f1(val_targets, num_labels)
    metrics.update(write_split_report(output_dir, "eval", val_targets, val_pred.predicted(), label_names))
    record_collapse(metrics, [None if multi_label else prediction_collapse(val_pred.predicted(), label_names)])
    metrics["eval_texts_per_second"] = val_pred.stats["texts_per_second"]
    write_jsonl(output_dir / "predictions_eval.jsonl",
                prediction_rows(splits.validation.texts, splits.validation.labels, val_pred))
    if splits.test is not None:
        test_targets = label_targets(splits.test, label_names)
        test_pred = classifier.predict(splits.test.texts, training_args.per_device_eval_batch_size)
        metrics.update(write_split_report(output_dir, "test", test_targets, test_pred.predicted(), label_names))
        if not multi_label:
            metrics["test_majority_macro_f1"] = majority_macro_f1(test_targets, num_labels)
        write_jsonl(output_dir / "predictions_test.jsonl",
                    prediction_rows(splits.test.texts, splits.test.labels, test_pred))
    plot_loss_curves(output_dir, title="classification fine-tuning")
    metrics["total_seconds"] = time.perf_counter() - started
    metrics["peak_memory_mb"] = peak_memory_mb()
    metrics = write_metrics(output_dir, {k: v for k, v in metrics.items()
                                         if v is not None and not (isinstance(v, float) and math.isnan(v))})
    logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False))
    return metrics
