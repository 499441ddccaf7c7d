#!/bin/sh
# Fine-tune a Fin-Labeler: FinBERT2 (or any BERT-style encoder) for sequence classification.
# Binary, multi-class or multi-label (label lists); the best checkpoint and early stopping use the
# validation split only, the test split is scored once at the end.
#
#   sh Fin-labeler/runclassify.sh configs/classify/tiny.yaml --output_dir runs/classify
#   sh Fin-labeler/runclassify.sh configs/classify/base.yaml \
#       --train_data train.jsonl --eval_data dev.jsonl --test_data test.jsonl --output_dir runs/sc2
#
# Any --key value after the config overrides that key (see `finbert2 classify train --help`).
# The TF-IDF + logistic-regression baseline on the same splits:
#   finbert2 classify baseline <same config> --output_dir runs/sc2_baseline
set -e
PYTHON=${PYTHON:-python}
CONFIG=${1:?usage: sh runclassify.sh CONFIG.yaml [--key value ...]}
shift

exec "$PYTHON" -m finbert2.classify train "$CONFIG" "$@"
