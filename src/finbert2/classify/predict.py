"""Batch inference: label a JSONL/CSV file with a fine-tuned classifier.

    finbert2 classify predict --model_name_or_path runs/classify --input_file news.jsonl --output_file pred.jsonl
    python Fin-labeler/sequence_inference.py --model_name_or_path runs/classify --input_file news.csv \
        --output_file pred.csv --return_cls True

Each output row holds the input row's fields (``keep_fields``), ``prediction`` (a label, or a list
for multi-label), ``probabilities`` (every class) and, on request, ``cls`` (the [CLS] vector, the
window average for chunked texts). Inputs are tokenised at once and run longest-first in batches.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

from finbert2.classify.args import PredictArguments
from finbert2.classify.data import label_targets
from finbert2.classify.inference import SequenceClassifier
from finbert2.classify.metrics import summary_metrics
from finbert2.data import atomic_write_text, iter_records, read_classification
from finbert2.data.readers import CSV_SUFFIXES, get_text
from finbert2.errors import DataError
from finbert2.precision import command_bf16

logger = logging.getLogger("finbert2.classify.predict")


def read_input(path: str | Path, text_field: str) -> tuple[list[int], list[dict], list[str]]:
    """``(line numbers, rows, texts)``; a missing text column is reported once, with the columns found."""
    path = Path(path)
    linenos, rows, texts = [], [], []
    for lineno, obj in iter_records(path):
        if not rows and text_field not in obj:
            found = ", ".join(map(str, obj)) or "none"
            raise DataError(path, lineno, f"no text field/column '{text_field}' (found: {found}); set --text_field")
        linenos.append(lineno)
        rows.append(obj)
        texts.append(get_text(obj, text_field, path, lineno))
    return linenos, rows, texts


def output_rows(rows: list[dict], predictions, keep_fields: bool, return_cls: bool) -> list[dict]:
    labels = predictions.labels()
    probabilities = predictions.probabilities
    out = []
    for i, row in enumerate(rows):
        record = dict(row) if keep_fields else {}
        record["prediction"] = labels[i]
        record["probabilities"] = {name: round(float(p), 6) for name, p in zip(predictions.label_names, probabilities[i])}
        if return_cls:
            record["cls"] = [round(float(x), 6) for x in predictions.cls[i]]
        out.append(record)
    return out


def write_predictions(path: str | Path, records: list[dict]) -> None:
    path = Path(path)
    if path.suffix.lower() not in CSV_SUFFIXES:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return
    # CSV: one prob_<label> column per class; lists (multi-label predictions, cls) as JSON.
    flat = []
    for record in records:
        row = {k: v for k, v in record.items() if k != "probabilities"}
        row.update({f"prob_{name}": p for name, p in record["probabilities"].items()})
        flat.append({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(path, buffer.getvalue())


def run_predict(args: PredictArguments) -> dict:
    linenos, rows, texts = read_input(args.input_file, args.text_field)
    classifier = SequenceClassifier.from_pretrained(
        args.model_name_or_path, args.tokenizer_name, max_length=args.max_length, truncation=args.truncation,
        threshold=args.threshold, device=args.device,
        bf16=command_bf16(args, use_cpu=str(args.device or '').startswith('cpu')), trust_remote_code=args.trust_remote_code)
    gold = None
    if args.label_field:
        # Gold labels must be the model's labels: a file for another label set is an error, not a 0% score.
        gold = read_classification(args.input_file, args.text_field, args.label_field,
                                   label_set=classifier.label_names, multi_label=classifier.multi_label)
    logger.info("%d texts from %s; model %s (%d labels, %s, max_length %d)", len(texts), args.input_file,
                args.model_name_or_path, len(classifier.label_names), classifier.settings.truncation,
                classifier.settings.max_length)
    predictions = classifier.predict(texts, args.batch_size, return_cls=args.return_cls, progress=True,
                                     max_batch_tokens=args.max_batch_tokens)
    write_predictions(args.output_file, output_rows(rows, predictions, args.keep_fields, args.return_cls))
    stats = dict(predictions.stats)
    print(f"predicted {stats['texts']} texts ({stats['model_inputs']} model inputs, {stats['tokens']} tokens) in "
          f"{stats['seconds']:.2f} s: {stats['texts_per_second']:.1f} texts/s, "
          f"{stats['tokens_per_second']:.0f} tokens/s -> {args.output_file}", file=sys.stderr)
    if gold is not None:
        targets = label_targets(gold, classifier.label_names)
        scores = summary_metrics(targets, predictions.predicted(), len(classifier.label_names))
        print("against " + args.label_field + ": " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
              file=sys.stderr)
        stats.update(scores)
    return stats

