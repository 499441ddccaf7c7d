"""The classical baseline: TF-IDF over jieba words and character n-grams + logistic regression.

    finbert2 classify baseline configs/classify/tiny.yaml --output_dir runs/classify_baseline

Same splits, same validation-only model selection (the regularisation strength C is picked on
validation macro-F1) and the same metrics files as ``classify train``, so every fine-tuning result
stands next to a strong classical baseline.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import FeatureUnion, Pipeline

from finbert2.classify.args import BaselineArguments, DataArguments
from finbert2.classify.data import label_targets, load_splits
from finbert2.classify.metrics import majority_macro_f1, summary_metrics, write_split_report
from finbert2.data import write_jsonl
from finbert2.run import RunArguments, prepare_output_dir, setup_logging, write_metrics, write_run_config
from finbert2.segmentation import default_segmenter

logger = logging.getLogger("finbert2.classify.baseline")


def jieba_words(text: str) -> list[str]:
    """jieba's words without whitespace tokens (module-level so a fitted pipeline pickles)."""
    return [word for word in default_segmenter().lcut(text) if word.strip()]


def build_pipeline(args: BaselineArguments, c_value: float, multi_label: bool, class_weighting: bool,
                   seed: int = 42) -> Pipeline:
    features = FeatureUnion([
        ("words", TfidfVectorizer(tokenizer=jieba_words, token_pattern=None, lowercase=True,
                                  ngram_range=(1, args.word_ngram_max), min_df=args.min_df,
                                  max_features=args.max_features, sublinear_tf=True)),
        ("chars", TfidfVectorizer(analyzer="char", ngram_range=(args.char_ngram_min, args.char_ngram_max),
                                  min_df=args.min_df, max_features=args.max_features, sublinear_tf=True)),
    ])
    classifier = LogisticRegression(C=c_value, max_iter=2000, random_state=seed,
                                    class_weight="balanced" if class_weighting else None)
    if multi_label:
        classifier = OneVsRestClassifier(classifier)
    return Pipeline([("tfidf", features), ("logreg", classifier)])


def run_baseline(data_args: DataArguments, args: BaselineArguments, run_args: RunArguments, output_dir: str,
                 seed: int = 42) -> dict:
    started = time.perf_counter()
    splits = load_splits(
        data_args.train_data, data_args.eval_data, data_args.test_data, text_field=data_args.text_field,
        label_field=data_args.label_field, label_names=data_args.label_list, multi_label=data_args.multi_label,
        validation_split_percentage=data_args.validation_split_percentage, seed=seed,
    )
    output_dir = prepare_output_dir(output_dir, overwrite=run_args.overwrite_output_dir, clear=True)
    setup_logging(output_dir)
    write_run_config(output_dir, data_args, args, run_args, stage="classify baseline",
                     extra={"output_dir": str(output_dir), "seed": seed, "label_names": splits.label_names, "multi_label": splits.multi_label,
                            "validation_carved_from_train": splits.validation_carved})
    names, multi = splits.label_names, splits.multi_label
    train_y = label_targets(splits.train, names)
    val_y = label_targets(splits.validation, names)
    best = None
    for c_value in args.c_values:
        pipeline = build_pipeline(args, c_value, multi, data_args.class_weighting, seed).fit(splits.train.texts, train_y)
        predicted, _ = _predict_aligned(pipeline, splits.validation.texts, multi, data_args.threshold, len(names))
        score = summary_metrics(val_y, predicted, len(names))["macro_f1"]
        logger.info("C=%g: validation macro-F1 %.4f", c_value, score)
        if best is None or score > best[1]:
            best = (c_value, score, pipeline)
    c_value, _, pipeline = best
    logger.info("selected C=%g on validation", c_value)

    metrics: dict = {"c": c_value, "num_labels": len(names), "train_rows": len(splits.train.texts),
                     "eval_rows": len(splits.validation.texts)}
    predicted, probabilities = _predict_aligned(pipeline, splits.validation.texts, multi, data_args.threshold, len(names))
    metrics.update(write_split_report(output_dir, "eval", val_y, predicted, names))
    if splits.test is not None:
        test_y = label_targets(splits.test, names)
        predicted, probabilities = _predict_aligned(pipeline, splits.test.texts, multi, data_args.threshold, len(names))
        metrics.update(write_split_report(output_dir, "test", test_y, predicted, names))
        if not multi:
            metrics["test_majority_macro_f1"] = majority_macro_f1(test_y, len(names))
        rows = []
        for text, gold, pred, probs in zip(splits.test.texts, splits.test.labels, predicted, probabilities):
            label = [names[j] for j in np.flatnonzero(pred)] if multi else names[int(pred)]
            rows.append({"text": text, "label": gold, "prediction": label,
                         "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)}})
        write_jsonl(output_dir / "predictions_test.jsonl", rows)
    metrics["total_seconds"] = time.perf_counter() - started
    metrics = write_metrics(output_dir, metrics)
    logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False))
    return metrics


def _predict_aligned(pipeline: Pipeline, texts: list[str], multi_label: bool, threshold: float,
                     num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Predictions over all ``num_labels`` columns, also when some label never occurs in training."""
    probabilities = pipeline.predict_proba(texts)
    classes = pipeline.classes_ if not multi_label else np.arange(probabilities.shape[1])
    full = np.zeros((len(texts), num_labels), dtype=np.float64)
    full[:, np.asarray(classes, dtype=np.int64)] = probabilities
    if multi_label:
        return (full >= threshold).astype(np.int64), full
    return full.argmax(axis=1), full
