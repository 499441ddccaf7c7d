#!/bin/sh
# Fin-Retriever contrastive fine-tuning: InfoNCE of each query against 1 positive, hard negatives
# and in-batch negatives (cross-device under torchrun), CLS pooling, L2 norm, the query instruction
# 为这个句子生成表示以用于检索相关文章：. Writes an HF folder that is also a sentence-transformers model.
#
#   sh Fin-retriever/contrastive_finetune.sh configs/retriever/tiny.yaml --output_dir runs/retriever
#   NPROC=4 sh Fin-retriever/contrastive_finetune.sh configs/retriever/base.yaml \
#       --train_data my_train.jsonl --output_dir runs/fin-retriever-base
#
# NPROC > 1 launches torchrun (add --use_cpu True on a machine without GPUs). Any --key value after
# the config overrides that key (see `finbert2 retrieve train --help`).
set -e
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
MASTER_PORT=${MASTER_PORT:-29517}
CONFIG=${1:?usage: sh contrastive_finetune.sh CONFIG.yaml [--key value ...]}
shift

if [ "$NPROC" -gt 1 ]; then
    exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --master_port "$MASTER_PORT" \
        -m finbert2.retrieve train "$CONFIG" "$@"
fi
exec "$PYTHON" -m finbert2.retrieve train "$CONFIG" "$@"
