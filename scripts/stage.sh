# Sourced by the pipeline scripts (quickstart.sh, reproduce_mini.sh): one stage runner for both.
# Expects PIPELINE (the script's name for messages), OUT and TOTAL to be set.
#
# stage NAME RUN_DIR COMMAND...: run one stage, naming it and its place in the pipeline; a stage
# whose RUN_DIR holds metrics.json (finished) is skipped, so a rerun resumes; the first failure
# stops the pipeline with its name, keeping every earlier stage's results. Each finished stage appends
# "name<TAB>seconds" to OUT/stage_times.tsv (the budget table of the reproduction).
# step NAME COMMAND...: a closing step that always runs (tables, report): numbered, stopped on failure, not timed.
# DRY_RUN=1: print each stage's and step's command line ("==> [n/TOTAL] NAME: COMMAND") and run nothing, so
# what a preset or an option changes is seen without training anything.
STEP=0
START=$(date +%s)
dry_run() {  # name command...: true (after printing the command) under DRY_RUN
    [ -n "${DRY_RUN:-}" ] || return 1
    name=$1; shift
    echo "==> [$STEP/$TOTAL] $name: $*"
}
stage() {
    name=$1; run_dir=$2; shift 2
    STEP=$((STEP + 1))
    dry_run "$name" "$@" && return 0
    if [ -f "$run_dir/metrics.json" ]; then
        echo "==> [$STEP/$TOTAL] $name: already finished in $run_dir, skipped"
        return 0
    fi
    echo "==> [$STEP/$TOTAL] $name -> $run_dir ($(( $(date +%s) - START ))s elapsed)"
    t0=$(date +%s)
    if ! "$@"; then
        hint=""
        [ -f "$run_dir/run.log" ] && hint=" (see $run_dir/run.log)"
        echo "$PIPELINE: stage '$name' failed$hint; earlier stages' results are kept in $OUT" >&2
        exit 1
    fi
    echo "==> $name finished in $(( $(date +%s) - t0 ))s"
    printf '%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" >> "$OUT/stage_times.tsv"
}
step() {
    name=$1; shift
    STEP=$((STEP + 1))
    dry_run "$name" "$@" && return 0
    echo "==> [$STEP/$TOTAL] $name"
    "$@" || { echo "$PIPELINE: stage '$name' failed" >&2; exit 1; }
}
