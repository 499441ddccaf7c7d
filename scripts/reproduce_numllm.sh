#!/bin/sh
# Small NumLLM reproduction on google/gemma-3-270m, on a CPU.
#
#   sh scripts/reproduce_numllm.sh DATA_DIR OUT
#
# DATA_DIR is laid out as ../shared/data (cfbenchmark-basic/, fineval-academic/, cflue/). Stages
# (every run folder under OUT; a finished one is skipped, so a rerun resumes):
#   gemma       finbert2 convert gemma-3-270m (PyPI wheels, Gemma Terms of Use; cached per machine)
#   data        FinEval and CFLUE to the question format
#   items       build-numeric on CFBenchmark text: NumCT items + a seeded document split (10% held out)
#   domain      LoRA continual pretraining on the training documents
#   numeric     LoRA tuning on the NumCT items of the training documents
#   merged      SVD fusion of both adapters, merged into the base
#   eval        base, +domain, +numeric, merged on a seeded FinEval val subset, CFLUE single-choice
#               and the held-out NumCT items (MAX_QUESTIONS each), perplexity on held-out documents
# Defaults: about 45-60 minutes on 2 CPU cores. Larger: DOMAIN_STEPS=300 NUMERIC_STEPS=300 MAX_QUESTIONS=0.
set -e
if [ $# -ne 2 ]; then
    echo "usage: sh scripts/reproduce_numllm.sh DATA_DIR OUT" >&2
    exit 2
fi
DATA_DIR=$(cd "$1" && pwd)
OUT=$2
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---- sizes (environment variables; defaults fit the CPU budget) ----
DOMAIN_STEPS=${DOMAIN_STEPS:-24}         # optimizer steps of 4 x 128 tokens (~20 s each on 2 cores)
NUMERIC_STEPS=${NUMERIC_STEPS:-24}       # optimizer steps of NUMERIC_BATCH NumCT items
NUMERIC_BATCH=${NUMERIC_BATCH:-8}
HELDOUT_SEQUENCES=${HELDOUT_SEQUENCES:-32} # held-out sequences/items for each module's loss before and after
MAX_QUESTIONS=${MAX_QUESTIONS:-60}       # per test file, a seeded sample (0: all); ~2 s per question and model
PERPLEXITY_TEXTS=${PERPLEXITY_TEXTS:-20} # held-out documents, first 128 tokens each
SEED=${SEED:-42}
CONFIG=configs/numllm/gemma-270m.yaml
BASE=$OUT/gemma-3-270m
I=$OUT/items

PIPELINE=reproduce_numllm
TOTAL=7
. scripts/stage.sh

prepare_data() {
    rm -rf "$OUT/data.partial" && mkdir -p "$OUT/data.partial" || return 1
    "$PYTHON" -m finbert2 convert fineval --input_dir "$DATA_DIR/fineval-academic" \
        --output_dir "$OUT/data.partial/fineval" > "$OUT/data.partial/fineval.json" || return 1
    "$PYTHON" -m finbert2 convert cflue --input_dir "$DATA_DIR/cflue" \
        --output_dir "$OUT/data.partial/cflue" > "$OUT/data.partial/cflue.json" || return 1
    cat "$OUT/data.partial/fineval.json" > "$OUT/data.partial/metrics.json"
    rm -rf "$OUT/data" && mv "$OUT/data.partial" "$OUT/data"
}

stage gemma "$BASE" "$PYTHON" -m finbert2 convert gemma-3-270m "$BASE"
stage data "$OUT/data" prepare_data
stage items "$I" "$PYTHON" -m finbert2 numllm build-numeric "$CONFIG" --seed "$SEED" --output_dir "$I" \
    --input_data "$DATA_DIR/cfbenchmark-basic/data/summary.jsonl" "$DATA_DIR/cfbenchmark-basic/data/sentiment.jsonl" \
    "$DATA_DIR/cfbenchmark-basic/data/company.jsonl"
stage domain "$OUT/domain" sh Fin-numllm/run_domain_lora.sh "$CONFIG" --model_name_or_path "$BASE" \
    --train_data "$I/train_text.jsonl" --eval_data "$I/heldout_text.jsonl" --max_steps "$DOMAIN_STEPS" \
    --max_eval_samples "$HELDOUT_SEQUENCES" \
    --seed "$SEED" --output_dir "$OUT/domain"
stage numeric "$OUT/numeric" sh Fin-numllm/run_numeric_lora.sh "$CONFIG" --model_name_or_path "$BASE" \
    --train_data "$I/train.jsonl" --eval_data "$I/heldout.jsonl" --max_steps "$NUMERIC_STEPS" \
    --per_device_train_batch_size "$NUMERIC_BATCH" --max_eval_samples "$HELDOUT_SEQUENCES" \
    --seed "$SEED" --output_dir "$OUT/numeric"
stage merged "$OUT/merged" sh Fin-numllm/merge.sh "$CONFIG" --model_name_or_path "$BASE" \
    --adapters "$OUT/domain" "$OUT/numeric" --output_dir "$OUT/merged"
stage eval "$OUT/eval" sh Fin-numllm/evaluate.sh "$CONFIG" --model_name_or_path "$BASE" \
    --models domain="$OUT/domain" numeric="$OUT/numeric" merged="$OUT/merged" \
    --dev_data "$OUT/data/fineval/dev.jsonl" \
    --test_data "$OUT/data/fineval/val.jsonl" "$OUT/data/cflue/single.jsonl" "$I/heldout.jsonl" \
    --max_questions "$MAX_QUESTIONS" --perplexity_data "$I/heldout_text.jsonl" \
    --max_perplexity_texts "$PERPLEXITY_TEXTS" --seed "$SEED" --output_dir "$OUT/eval"
echo "==> $PIPELINE finished in $(( $(date +%s) - START ))s: $OUT/eval/results.md"
