#!/bin/sh
# RetroMAE pretraining: a whole-word-masked encoder plus a one-layer enhanced decoder, starting
# from a checkpoint (usually the MLM output) or from scratch; saves the encoder as a plain BERT.
#
#   sh FinBERT2/pretrain/run_retromae.sh configs/retromae/tiny.yaml --model_name_or_path runs/mlm --output_dir runs/retromae
#   NPROC=8 sh FinBERT2/pretrain/run_retromae.sh configs/retromae/base.yaml --train_data corpus.jsonl --output_dir runs/retromae
#   NPROC=2 sh FinBERT2/pretrain/run_retromae.sh configs/retromae/tiny.yaml --use_cpu True --output_dir runs/retromae   # CPU, 2 processes
#
# Any --key value after the config overrides that key (see `finbert2 retromae --help`). An interrupted
# run resumes from the last checkpoint in output_dir when started again with the same command.
set -e
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}            # processes (GPUs); above 1 the run goes through torchrun
CONFIG=${1:?usage: sh run_retromae.sh CONFIG.yaml [--key value ...]}
shift

if [ "$NPROC" -gt 1 ]; then
    exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" -m finbert2.pretrain.retromae "$CONFIG" "$@"
fi
exec "$PYTHON" -m finbert2.pretrain.retromae "$CONFIG" "$@"
