#!/bin/sh
# Train the domain tokenizer: a SentencePiece unigram model on a financial corpus, whose frequent
# multi-character Chinese pieces are appended to a BERT WordPiece vocab (base ids unchanged).
#
#   sh FinBERT2/pretrain_wordpiece_tokenizer/spm.sh configs/tokenizer/tiny.yaml --output_dir runs/tokenizer
#   sh FinBERT2/pretrain_wordpiece_tokenizer/spm.sh configs/tokenizer/base.yaml \
#       --train_data my_corpus.jsonl --output_dir runs/tokenizer
#
# Any --key value after the config overrides that key (see `finbert2 tokenizer --help`).
set -e
PYTHON=${PYTHON:-python}
CONFIG=${1:?usage: sh spm.sh CONFIG.yaml [--key value ...]}
shift

exec "$PYTHON" -m finbert2.tokenizer "$CONFIG" "$@"
