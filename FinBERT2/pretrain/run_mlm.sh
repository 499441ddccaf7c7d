#!/bin/sh
# Masked-LM pretraining with Chinese whole-word masking: continued from a checkpoint
# (model_name_or_path) or from scratch over a tokenizer (tokenizer_name + tiny_* sizes).
#
#   sh FinBERT2/pretrain/run_mlm.sh configs/mlm/tiny.yaml --output_dir runs/mlm
#   NPROC=8 sh FinBERT2/pretrain/run_mlm.sh configs/mlm/base.yaml --train_data corpus.jsonl --output_dir runs/mlm
#   NPROC=2 sh FinBERT2/pretrain/run_mlm.sh configs/mlm/tiny.yaml --use_cpu True --output_dir runs/mlm   # CPU, 2 processes
#
# Any --key value after the config overrides that key (see `finbert2 mlm --help`). An interrupted
# run resumes from the last checkpoint in output_dir when started again with the same command.
set -e
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}            # processes (GPUs); above 1 the run goes through torchrun
CONFIG=${1:?usage: sh run_mlm.sh CONFIG.yaml [--key value ...]}
shift

if [ "$NPROC" -gt 1 ]; then
    exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" -m finbert2.pretrain.mlm "$CONFIG" "$@"
fi
exec "$PYTHON" -m finbert2.pretrain.mlm "$CONFIG" "$@"
