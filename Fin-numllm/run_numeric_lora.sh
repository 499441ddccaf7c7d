#!/bin/sh
# NumLLM numeric module: LoRA tuning on NumCT items ({"prompt","answer"}; `finbert2 numllm build-numeric`
# writes them); the loss is on the answer letter (and eos) only.
#
#   sh Fin-numllm/run_numeric_lora.sh configs/numllm/gemma-270m.yaml --output_dir runs/numllm/numeric
#   NPROC=8 sh Fin-numllm/run_numeric_lora.sh configs/numllm/base.yaml --output_dir runs/numllm7b/numeric
#
# Reads the config's shared keys and its `numeric:` section; --key value after the config overrides them.
TASK=numeric exec sh "$(dirname "$0")/run_domain_lora.sh" "$@"
