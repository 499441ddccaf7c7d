#!/bin/sh
# NumLLM fusion: the domain and numeric LoRA adapters -> peft add_weighted_adapter (svd by default;
# linear, cat, ties with --combination_type) -> merge_and_unload -> a plain causal-LM folder.
#
#   sh Fin-numllm/merge.sh configs/numllm/gemma-270m.yaml \
#       --adapters runs/numllm/domain runs/numllm/numeric --output_dir runs/numllm/merged
#   sh Fin-numllm/merge.sh configs/numllm/gemma-270m.yaml --adapters A B --weights 1.0 0.5 --combination_type cat ...
set -e
PYTHON=${PYTHON:-python}
CONFIG=${1:?usage: sh merge.sh CONFIG.yaml [--key value ...]}
shift

exec "$PYTHON" -m finbert2.numllm merge "$CONFIG" "$@"
