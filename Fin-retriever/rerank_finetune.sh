#!/bin/sh
# Fin-Reranker cross-encoder fine-tuning: listwise softmax cross-entropy of each query's positive
# against its mined hard negatives; validation reranks BM25's top eval_top_k. Writes a folder that
# sentence_transformers.CrossEncoder loads.
#
#   sh Fin-retriever/rerank_finetune.sh configs/reranker/tiny.yaml --output_dir runs/reranker
#   NPROC=4 sh Fin-retriever/rerank_finetune.sh configs/reranker/base.yaml --train_data mined.jsonl --output_dir runs/reranker-base
#
# NPROC > 1 launches torchrun (add --use_cpu True on a machine without GPUs). Any --key value after
# the config overrides that key (see `finbert2 rerank train --help`).
set -e
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
MASTER_PORT=${MASTER_PORT:-29518}
CONFIG=${1:?usage: sh rerank_finetune.sh CONFIG.yaml [--key value ...]}
shift

if [ "$NPROC" -gt 1 ]; then
    exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --master_port "$MASTER_PORT" \
        -m finbert2.rerank train "$CONFIG" "$@"
fi
exec "$PYTHON" -m finbert2.rerank train "$CONFIG" "$@"
