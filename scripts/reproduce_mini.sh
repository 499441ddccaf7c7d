#!/bin/sh
# Mini reproduction of the FinBERT2 paper's claims on the real public data, on a CPU.
#
#   sh scripts/reproduce_mini.sh DATA_DIR OUT
#
# DATA_DIR: the public data as `sh scripts/get_public_data.sh DATA_DIR` lays it out (cfbenchmark-basic/, fin-eva/, finbert2-upstream/,
# jingewu-financial-sentiment-analysis/). Pipeline (every run folder under OUT):
#   data        convert the public sets to the project's formats; write the pretraining corpora
#   tokenizer   WordPiece vocab built from scratch on CFBenchmark text + domain words
#   mlm         small BERT, masked-LM pretraining (whole-word masking) on the real text
#   retromae    RetroMAE continued from the MLM encoder
#   classify/*  CFBenchmark sentiment and SC_2: MLM encoder vs random init vs TF-IDF + LR
#   retrieve/*  Fin-Eva held-out split: contrastive fine-tuning from random / MLM / RetroMAE,
#               evaluated with BM25 (and the two encoders before fine-tuning) in one table
#   topics/*    a sample of JINGEWU headlines: RetroMAE retriever embeddings vs TF-IDF/LSA
#   report      finbert2 report OUT --output OUT/report
# A stage whose metrics.json exists is skipped, so a rerun resumes; the first failing stage
# stops the pipeline, named. Defaults: about 30 minutes on an idle 2-core CPU. On a GPU
# raise the sizes below, e.g. MLM_STEPS=20000 RETROMAE_STEPS=10000 HIDDEN=768 LAYERS=12 USE_CPU=false.
set -e
if [ $# -ne 2 ]; then
    echo "usage: sh scripts/reproduce_mini.sh DATA_DIR OUT" >&2
    exit 2
fi
DATA_DIR=$(cd "$1" && pwd)
OUT=$2
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---- sizes (environment variables; defaults fit the CPU budget) ----
HIDDEN=${HIDDEN:-256}                    # encoder width (heads = HIDDEN/64, feed-forward = 4*HIDDEN)
LAYERS=${LAYERS:-4}                      # encoder depth
SEQ_LEN=${SEQ_LEN:-128}                  # pretraining sequence length
MLM_STEPS=${MLM_STEPS:-200}              # MLM optimizer steps of MLM_BATCH sequences
MLM_BATCH=${MLM_BATCH:-32}
RETROMAE_STEPS=${RETROMAE_STEPS:-60}    # RetroMAE steps of MLM_BATCH passages
CLS_EPOCHS=${CLS_EPOCHS:-8}              # classification epochs (best epoch chosen on validation)
CLS_BATCH=${CLS_BATCH:-16}               # 3 epochs of 32 (13 steps each) left both encoders at the label prior
CLS_MAX_LENGTH=${CLS_MAX_LENGTH:-192}    # tokens per text (head+tail of long news)
CLS_LR=${CLS_LR:-1e-4}                   # one learning rate for pretrained and random init alike
RET_STEPS=${RET_STEPS:-40}              # contrastive steps per retriever
RET_BATCH=${RET_BATCH:-16}               # queries per step (in-batch negatives)
RET_GROUP=${RET_GROUP:-2}                # passages per query: 1 positive + (RET_GROUP-1) negatives
RET_PASSAGE_LEN=${RET_PASSAGE_LEN:-192}  # Fin-Eva contexts average ~220 characters
RET_LR=${RET_LR:-5e-4}
RET_POOLING=${RET_POOLING:-cls}          # the paper's pooling, for all three retrievers
TOPIC_DOCS=${TOPIC_DOCS:-3000}           # JINGEWU headlines sampled for topic modeling
TOPIC_MIN_CLUSTER=${TOPIC_MIN_CLUSTER:-20}
SCRATCH_VOCAB=${SCRATCH_VOCAB:-6000}     # characters/pieces of the from-scratch WordPiece vocab
ADDED_WORDS=${ADDED_WORDS:-2000}         # domain words appended to it
USE_CPU=${USE_CPU:-true}
SEED=${SEED:-42}
HEADS=$((HIDDEN / 64)); [ "$HEADS" -ge 1 ] || HEADS=1
FFN=$((HIDDEN * 4))
MODEL_SIZE="--tiny_hidden_size $HIDDEN --tiny_num_hidden_layers $LAYERS --tiny_num_attention_heads $HEADS --tiny_intermediate_size $FFN"
D=$OUT/data

PIPELINE=reproduce_mini
TOTAL=17
. scripts/stage.sh

# ---- 1. data: converters, then the corpora (classification/retrieval test text left out) ----
prepare_data() {
    rm -rf "$D.partial" && mkdir -p "$D.partial" || return 1
    "$PYTHON" -m finbert2 convert cfbenchmark-sentiment "$DATA_DIR/cfbenchmark-basic/data/sentiment.jsonl" \
        "$D.partial/cfb_sentiment" --test_fraction 0.2 --validation_fraction 0.1 --seed "$SEED" || return 1
    "$PYTHON" -m finbert2 convert sc2 "$DATA_DIR/finbert2-upstream/Fin-labeler/SC_2/test_SC_2.csv" \
        "$D.partial/sc2_all.jsonl" || return 1
    "$PYTHON" -m finbert2 convert fin-eva --input_dir "$DATA_DIR/fin-eva" --output_dir "$D.partial/fineva" \
        --seed "$SEED" || return 1
    "$PYTHON" -m finbert2 convert jingewu "$DATA_DIR/jingewu-financial-sentiment-analysis/data/CH.csv" \
        --output_file "$D.partial/jingewu.jsonl" || return 1
    "$PYTHON" - "$DATA_DIR" "$D.partial" "$SEED" <<'EOF' || return 1
import json, re, sys
from pathlib import Path
from sklearn.model_selection import train_test_split
from finbert2.data import write_json, write_jsonl

def iter_jsonl(path):  # the converters' own output: already validated
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)

data_dir, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
texts = lambda path, field="text": [row[field] for row in iter_jsonl(path)]
# SC_2 ships only its 400-row test file: a stratified 60/15/25 train/validation/test split.
rows = list(iter_jsonl(out / "sc2_all.jsonl"))
labels = [r["label"] for r in rows]
train, test = train_test_split(rows, test_size=0.25, stratify=labels, random_state=seed)
train, val = train_test_split(train, test_size=0.2, stratify=[r["label"] for r in train], random_state=seed)
for name, part in (("train", train), ("validation", val), ("test", test)):
    write_jsonl(out / "sc2" / f"{name}.jsonl", part)
# Text no later evaluation may have seen in pretraining: classification test texts and the
# Fin-Eva held-out contexts (the retrieval test documents that have a relevant query).
# CFBenchmark repeats a text across its task files with different whitespace: compare without it.
key = lambda text: re.sub(r"\s+", "", text)
held_out = {key(t) for t in texts(out / "cfb_sentiment" / "test.jsonl")} | {key(r["text"]) for r in test}
test_docs = {r["docid"] for r in iter_jsonl(out / "fineva" / "eval" / "test_qrels.jsonl")}
fineva = [r["text"] for r in iter_jsonl(out / "fineva" / "eval" / "corpus.jsonl") if r["id"] not in test_docs]
cfb = []
for path in sorted((data_dir / "cfbenchmark-basic" / "data").glob("*.jsonl")):
    cfb += [t.strip() for t in texts(path, "input")]
cfb = [t for t in dict.fromkeys(cfb) if t and key(t) not in held_out]
headlines = texts(out / "jingewu.jsonl")
write_jsonl(out / "tokenizer_corpus.jsonl", ({"text": t} for t in cfb))
corpus = [t for t in dict.fromkeys(cfb + [t.strip() for t in fineva] + headlines) if key(t) not in held_out]
corpus = [t for t in corpus if t]
write_jsonl(out / "corpus.jsonl", ({"text": t} for t in corpus))
write_json(out / "metrics.json", {
    "cfbenchmark_documents": len(cfb), "fineva_contexts": len(fineva), "jingewu_headlines": len(headlines),
    "corpus_documents": len(corpus), "corpus_characters": sum(map(len, corpus)),
    "heldout_classification_texts": len(held_out), "heldout_fineva_contexts": len(test_docs),
    "sc2_train": len(train), "sc2_validation": len(val), "sc2_test": len(test)})
EOF
    rm -rf "$D" && mv "$D.partial" "$D"   # metrics.json appears only with complete data
}
stage data "$D" prepare_data

# ---- 2. tokenizer and pretraining ----
# From scratch rather than bert-base-chinese's 21,128 tokens: a small model trained for minutes
# sees each row of a ~7k vocab far more often, and its output softmax (every token in RetroMAE's
# decoder) is 3x cheaper. See docs/RESULTS.md.
stage tokenizer "$OUT/tokenizer" \
    "$PYTHON" -m finbert2 tokenizer configs/tokenizer/tiny.yaml --train_data "$D/tokenizer_corpus.jsonl" \
    --scratch_vocab_size "$SCRATCH_VOCAB" --scratch_min_frequency 3 --vocab_size 8000 \
    --min_word_frequency 20 --max_added_words "$ADDED_WORDS" --output_dir "$OUT/tokenizer"
PRETRAIN_COMMON="--train_data $D/corpus.jsonl --validation_split_percentage 2 --max_eval_samples 256
    --max_seq_length $SEQ_LEN --per_device_train_batch_size $MLM_BATCH --use_cpu $USE_CPU --seed $SEED
    --logging_steps 10 --disable_tqdm false"
stage mlm "$OUT/mlm" \
    sh FinBERT2/pretrain/run_mlm.sh configs/mlm/tiny.yaml --tokenizer_name "$OUT/tokenizer" $MODEL_SIZE \
    $PRETRAIN_COMMON --max_steps "$MLM_STEPS" --warmup_steps $((MLM_STEPS / 10 + 1)) \
    --eval_steps $((MLM_STEPS / 4 + 1)) --save_steps $((MLM_STEPS / 4 + 1)) --output_dir "$OUT/mlm"
stage retromae "$OUT/retromae" \
    sh FinBERT2/pretrain/run_retromae.sh configs/retromae/tiny.yaml \
    --model_name_or_path "$OUT/mlm" --tokenizer_name "$OUT/mlm" $PRETRAIN_COMMON \
    --max_steps "$RETROMAE_STEPS" --warmup_steps $((RETROMAE_STEPS / 10 + 1)) \
    --eval_steps $((RETROMAE_STEPS / 2 + 1)) --save_steps $((RETROMAE_STEPS / 2 + 1)) --output_dir "$OUT/retromae"

# ---- 3. classification: MLM encoder vs the same architecture from random init vs TF-IDF + LR ----
for task in cfb_sentiment sc2; do
    DATA_ARGS="--train_data $D/$task/train.jsonl --eval_data $D/$task/validation.jsonl --test_data $D/$task/test.jsonl"
    CLS_ARGS="$DATA_ARGS --max_length $CLS_MAX_LENGTH --num_train_epochs $CLS_EPOCHS --learning_rate $CLS_LR
        --per_device_train_batch_size $CLS_BATCH
        --seed $SEED --early_stopping_patience $CLS_EPOCHS"
    stage "classify $task (MLM encoder)" "$OUT/classify/${task}_pretrained" \
        "$PYTHON" -m finbert2 classify train configs/classify/tiny.yaml $CLS_ARGS \
        --model_name_or_path "$OUT/mlm" --tokenizer_name "$OUT/mlm" --output_dir "$OUT/classify/${task}_pretrained"
    stage "classify $task (random init)" "$OUT/classify/${task}_random" \
        "$PYTHON" -m finbert2 classify train configs/classify/tiny.yaml $CLS_ARGS \
        --tokenizer_name "$OUT/tokenizer" $MODEL_SIZE --output_dir "$OUT/classify/${task}_random"
    stage "classify $task (TF-IDF + LR)" "$OUT/classify/${task}_tfidf" \
        "$PYTHON" -m finbert2 classify baseline configs/classify/tiny.yaml $DATA_ARGS \
        --output_dir "$OUT/classify/${task}_tfidf"
done

# ---- 4. retrieval on the Fin-Eva held-out split ----
# No eval_data during training: the only judged queries are the test split, never used for choices.
RET_ARGS="--train_data $D/fineva/train.jsonl --train_group_size $RET_GROUP --query_max_len 64
    --passage_max_len $RET_PASSAGE_LEN --temperature 0.05 --pooling $RET_POOLING --learning_rate $RET_LR
    --warmup_steps 0.1 --weight_decay 0.01 --max_steps $RET_STEPS --per_device_train_batch_size $RET_BATCH
    --eval_strategy no --save_strategy steps --save_steps $((RET_STEPS / 2 + 1)) --save_total_limit 1
    --logging_steps 5 --use_cpu $USE_CPU --seed $SEED --report_to none --dataloader_num_workers 0
    --disable_tqdm false"
stage "retriever from random init" "$OUT/retrieve/from_random" \
    "$PYTHON" -m finbert2 retrieve train $RET_ARGS --tokenizer_name "$OUT/tokenizer" $MODEL_SIZE \
    --output_dir "$OUT/retrieve/from_random"
stage "retriever from MLM" "$OUT/retrieve/from_mlm" \
    "$PYTHON" -m finbert2 retrieve train $RET_ARGS --model_name_or_path "$OUT/mlm" \
    --output_dir "$OUT/retrieve/from_mlm"
stage "retriever from RetroMAE" "$OUT/retrieve/from_retromae" \
    "$PYTHON" -m finbert2 retrieve train $RET_ARGS --model_name_or_path "$OUT/retromae" \
    --output_dir "$OUT/retrieve/from_retromae"
stage "retrieval evaluation" "$OUT/retrieve/evaluation" \
    "$PYTHON" -m finbert2 retrieve evaluate --eval_data "$D/fineva/eval" \
    --models bm25 "$OUT/retrieve/from_random" "$OUT/retrieve/from_mlm" "$OUT/retrieve/from_retromae" \
    "$OUT/mlm" "$OUT/retromae" \
    --labels bm25 finetuned_from_random finetuned_from_mlm finetuned_from_retromae mlm_no_finetune retromae_no_finetune \
    --pooling "$RET_POOLING" --max_length "$RET_PASSAGE_LEN" --output_dir "$OUT/retrieve/evaluation"

# ---- 5. topics on a JINGEWU sample: retriever embeddings vs TF-IDF/LSA vectors ----
TOPIC_ARGS="--train_data $D/jingewu.jsonl --max_docs $TOPIC_DOCS --seed $SEED
    --hdbscan_min_cluster_size $TOPIC_MIN_CLUSTER"
stage "topics (retriever embeddings)" "$OUT/topics/retriever" \
    "$PYTHON" -m finbert2 topics configs/topics/tiny.yaml $TOPIC_ARGS \
    --model_name_or_path "$OUT/retrieve/from_retromae" --output_dir "$OUT/topics/retriever"
stage "topics (TF-IDF)" "$OUT/topics/tfidf" \
    "$PYTHON" -m finbert2 topics configs/topics/tiny.yaml $TOPIC_ARGS --embedding_backend tfidf \
    --output_dir "$OUT/topics/tfidf"

# ---- 6. report ----
STEP=$((STEP + 1))
echo "==> [$STEP/$TOTAL] report -> $OUT/report"
"$PYTHON" -m finbert2 report "$OUT" --output "$OUT/report" --title "FinBERT2 mini reproduction" || {
    echo "reproduce_mini: stage 'report' failed" >&2; exit 1; }
echo "reproduce_mini: finished in $(( $(date +%s) - START ))s; report in $OUT/report/report.md"
