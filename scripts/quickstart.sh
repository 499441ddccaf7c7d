#!/bin/sh
# The main job: every stage of the toolkit on the synthetic demo data with the tiny configs,
# offline, on a laptop CPU. Each stage writes its run folder under OUT; a stage already finished
# (its metrics.json present) is skipped, so an interrupted quickstart picks up where it stopped.
#
#   sh scripts/quickstart.sh [OUT]        (default OUT: runs/quickstart)
set -e
OUT=${1:-runs/quickstart}
PYTHON=${PYTHON:-python}
export PYTHON
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

PIPELINE=quickstart
TOTAL=9
. scripts/stage.sh

stage tokenizer "$OUT/tokenizer" \
    sh FinBERT2/pretrain_wordpiece_tokenizer/spm.sh configs/tokenizer/tiny.yaml --output_dir "$OUT/tokenizer"
stage mlm "$OUT/mlm" \
    sh FinBERT2/pretrain/run_mlm.sh configs/mlm/tiny.yaml --tokenizer_name "$OUT/tokenizer" --output_dir "$OUT/mlm"
stage retromae "$OUT/retromae" \
    sh FinBERT2/pretrain/run_retromae.sh configs/retromae/tiny.yaml \
    --model_name_or_path "$OUT/mlm" --tokenizer_name "$OUT/mlm" --output_dir "$OUT/retromae"
stage classify "$OUT/classify" \
    sh Fin-labeler/runclassify.sh configs/classify/tiny.yaml \
    --model_name_or_path "$OUT/retromae" --tokenizer_name "$OUT/retromae" --num_train_epochs 3 \
    --output_dir "$OUT/classify"
stage classify_baseline "$OUT/classify_baseline" \
    "$PYTHON" -m finbert2 classify baseline configs/classify/tiny.yaml --output_dir "$OUT/classify_baseline"
stage retriever_mine "$OUT/retriever_mine" \
    "$PYTHON" -m finbert2 retrieve mine --model_name_or_path "$OUT/retromae" \
    --input_file data/demo/retrieval/queries.jsonl --candidate_pool data/demo/retrieval/candidates.jsonl \
    --range_for_sampling 2-50 --negative_number 7 --output_dir "$OUT/retriever_mine"
stage retriever "$OUT/retriever" \
    sh Fin-retriever/contrastive_finetune.sh configs/retriever/tiny.yaml --model_name_or_path "$OUT/retromae" \
    --tokenizer_name "$OUT/retromae" --train_data "$OUT/retriever_mine/train.jsonl" \
    --pooling cls --learning_rate 5e-4 --num_train_epochs 3 --output_dir "$OUT/retriever"
# BM25 and the encoder before fine-tuning, against the fine-tuned retriever
stage retriever_eval "$OUT/retriever_eval" \
    "$PYTHON" -m finbert2 retrieve evaluate --eval_data data/demo/retrieval/eval \
    --models bm25 "$OUT/retromae" "$OUT/retriever" --labels bm25 retromae fin-retriever --output_dir "$OUT/retriever_eval"
stage topics "$OUT/topics" \
    sh Fin-Topicmodel/run_topicmodel.sh configs/topics/tiny.yaml --model_name_or_path "$OUT/retriever" \
    --output_dir "$OUT/topics"

echo "==> report"
"$PYTHON" -m finbert2 report "$OUT" --output "$OUT/report" --title "FinBERT2 quickstart (demo data)"
echo "quickstart: all $TOTAL stages finished; report in $OUT/report/report.md and report.html"
