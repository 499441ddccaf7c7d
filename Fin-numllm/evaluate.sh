#!/bin/sh
# NumLLM evaluation: multiple-choice accuracy by option log-likelihood (no generation), numeric vs
# non-numeric, per subject and category, and held-out perplexity; the base model is always the first row.
#
#   sh Fin-numllm/evaluate.sh configs/numllm/gemma-270m.yaml --models domain=runs/numllm/domain \
#       numeric=runs/numllm/numeric merged=runs/numllm/merged --output_dir runs/numllm/eval
#   ... --n_shots 0 5     # few-shot: the first FinEval dev questions of each subject
set -e
PYTHON=${PYTHON:-python}
CONFIG=${1:?usage: sh evaluate.sh CONFIG.yaml [--key value ...]}
shift

exec "$PYTHON" -m finbert2.numllm evaluate "$CONFIG" "$@"
