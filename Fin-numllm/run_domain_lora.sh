#!/bin/sh
# NumLLM domain module: LoRA continual pretraining of a causal LM on financial text ({"text"} JSONL/.txt).
#
#   sh Fin-numllm/run_domain_lora.sh configs/numllm/gemma-270m.yaml --output_dir runs/numllm/domain
#   NPROC=8 sh Fin-numllm/run_domain_lora.sh configs/numllm/base.yaml --output_dir runs/numllm7b/domain
#   NPROC=2 sh Fin-numllm/run_domain_lora.sh configs/numllm/tiny.yaml --use_cpu True ...   # CPU, 2 processes
#
# Reads the config's shared keys and its `domain:` section (run_numeric_lora.sh: TASK=numeric, the
# `numeric:` section); any --key value after the config overrides them (`finbert2 numllm train --help`).
# Started again, an interrupted run resumes from its last checkpoint.
set -e
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}            # processes (GPUs); above 1 the run goes through torchrun
TASK=${TASK:-domain}
CONFIG=${1:?usage: sh run_${TASK}_lora.sh CONFIG.yaml [--key value ...]}
shift

if [ "$NPROC" -gt 1 ]; then
    exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" -m finbert2.numllm train "$CONFIG" --task "$TASK" "$@"
fi
exec "$PYTHON" -m finbert2.numllm train "$CONFIG" --task "$TASK" "$@"
