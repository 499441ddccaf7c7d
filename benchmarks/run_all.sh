#!/bin/sh
# Every benchmark at full size, both model sizes, fp32 and (where the CPU has native bf16) bf16.
# Run from the repo root on an IDLE machine with all cores (no OMP_NUM_THREADS limit):
#     sh benchmarks/run_all.sh            # JSON records and profiles land beside each script
# Rough total on 2 idle cores: 4-5 hours (per-command estimates in each folder's RESULTS.md).
# One benchmark at a time:  sh benchmarks/run_all.sh encode_throughput  (or classify_inference, ...)
set -e
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src"
B=benchmarks
only="$1"
run() { [ -z "$only" ] || [ "$only" = "$1" ] || return 0; shift; echo "+ $*"; "$@"; }

run encode_throughput      python $B/encode_throughput/bench.py      --size e5-small  --passages 10000 --profile 256 --output $B/encode_throughput/e5-small.json
run encode_throughput      python $B/encode_throughput/bench.py      --size bert-base --passages 3000  --profile 256 --output $B/encode_throughput/bert-base.json
run classify_inference     python $B/classify_inference/run.py       --size e5-small  --output $B/classify_inference/e5-small.json
run classify_inference     python $B/classify_inference/run.py       --size bert-base --repeats 1 --output $B/classify_inference/bert-base.json
run mlm_throughput         python $B/mlm_throughput/bench.py         --size e5-small  --steps 20 --rounds 2 --output $B/mlm_throughput/e5-small.json
run mlm_throughput         python $B/mlm_throughput/bench.py         --size bert-base --steps 10 --rounds 2 --output $B/mlm_throughput/bert-base.json
run mlm_throughput         python $B/mlm_throughput/bench.py         --size e5-small  --steps 12 --rounds 2 --speed_options --output $B/mlm_throughput/e5-small-speed-options.json
run mlm_throughput         python $B/mlm_throughput/speed_options_accuracy.py --size e5-small --steps 60 --output $B/mlm_throughput/e5-small-speed-options-accuracy.json
run contrastive_throughput python $B/contrastive_throughput/bench.py --size e5-small  --steps 40 --rounds 2 --output $B/contrastive_throughput/e5-small.json
run contrastive_throughput python $B/contrastive_throughput/bench.py --size e5-small  --steps 4 --profile_steps 3 --peer_first --output $B/contrastive_throughput/profile-run.json --profile_out $B/contrastive_throughput/profile-e5-small-peer-first.md
run contrastive_throughput python $B/contrastive_throughput/bench.py --size bert-base --steps 20 --rounds 2 --output $B/contrastive_throughput/bert-base.json
run contrastive_throughput python $B/contrastive_throughput/bench.py --size e5-small  --steps 20 --rounds 2 --keep_dropout --speed_options --output $B/contrastive_throughput/e5-small-speed-options.json
run retromae_vs_mlm        python $B/retromae_vs_mlm/bench.py        --size e5-small  --steps 20 --output $B/retromae_vs_mlm/e5-small.json  --profile_out $B/retromae_vs_mlm/profile-e5-small.md
run retromae_vs_mlm        python $B/retromae_vs_mlm/loss_bench.py   --output $B/retromae_vs_mlm/loss.json
run retromae_vs_mlm        python $B/retromae_vs_mlm/bench.py        --size bert-base --steps 10 --output $B/retromae_vs_mlm/bert-base.json --profile_out $B/retromae_vs_mlm/profile-bert-base.md
run rerank_latency         python $B/rerank_latency/run.py           --size e5-small  --output $B/rerank_latency/e5-small.json
