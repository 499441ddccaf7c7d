"""``finbert2 numllm merge``: LoRA adapters fused with peft ``add_weighted_adapter``, merged into the base.

    sh Fin-numllm/merge.sh configs/numllm/tiny.yaml --adapters runs/numllm/domain runs/numllm/numeric \\
        --output_dir runs/numllm/merged

NumLLM fuses its two modules by an SVD-based method; peft's ``svd`` combination is that: the
weighted sum of the adapters' updates ``sum_i w_i B_i A_i`` truncated by SVD to ``svd_rank``
(exact when the rank is the sum of the adapters' ranks). ``cat`` stacks the adapters (exactly the
weighted sum, rank = sum of ranks); ``linear`` and ``ties`` combine the A and B matrices separately
(same rank required; not the sum of the updates). ``merge_and_unload`` then folds the fused adapter
into the base weights, saved as a plain folder (safetensors) that ``AutoModelForCausalLM`` loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from finbert2.errors import ConfigError
from finbert2.numllm.args import CausalLMArguments, MergeArguments
from finbert2.numllm.train import causal_tokenizer, load_causal_lm
from finbert2.run import prepare_output_dir, setup_logging, write_metrics, write_run_config

logger = logging.getLogger("finbert2.numllm")

PROBE_TEXT = "公司2023年实现营业收入12.5亿元，同比增长23.4%，市盈率为15.2倍。"
FUSED = "fused"


def adapter_base(adapter_dir: str) -> str:
    """The base model an adapter folder records (``adapter_config.json``)."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{path}: not a peft adapter folder (no readable adapter_config.json)") from None


def resolve_base(model_args: CausalLMArguments, adapters: list[str]) -> str:
    if model_args.model_name_or_path:
        return model_args.model_name_or_path
    if not adapters:
        raise ConfigError("numllm: give model_name_or_path (a causal LM folder or hub id)")
    return adapter_base(adapters[0])


def load_adapters(base_model, adapters: list[str]):
    """A ``PeftModel`` holding every adapter, named ``adapter_0``, ``adapter_1``, ..."""
    from peft import PeftModel

    for path in adapters:
        adapter_base(path)  # a clear error for a folder that is not an adapter
    model = PeftModel.from_pretrained(base_model, adapters[0], adapter_name="adapter_0")
    for index, path in enumerate(adapters[1:], start=1):
        model.load_adapter(path, adapter_name=f"adapter_{index}")
    return model


def fuse_adapters(model, weights: list[float], combination_type: str, svd_rank: int | None = None,
                  density: float = 0.5) -> str:
    """Add the weighted combination of every loaded adapter as ``fused`` and make it the active one."""
    names = list(model.peft_config)
    options = {}
    if combination_type == "svd":
        options["svd_rank"] = svd_rank
    if combination_type == "ties":
        options["density"] = density
    try:
        model.add_weighted_adapter(names, weights, adapter_name=FUSED, combination_type=combination_type, **options)
    except ValueError as err:  # e.g. linear/ties over adapters of different ranks
        raise ConfigError(f"numllm merge: {combination_type}: {str(err).splitlines()[0]}") from None
    model.set_adapter(FUSED)
    return FUSED


@torch.inference_mode()
def probe_logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROBE_TEXT, return_tensors="pt")
    return model(**batch).logits.float()


def run_merge(model_args: CausalLMArguments, args: MergeArguments) -> dict:
    base = resolve_base(model_args, args.adapters)
    output_dir = prepare_output_dir(args.output_dir, overwrite=args.overwrite_output_dir, clear=True)
    setup_logging(output_dir)
    write_run_config(output_dir, model_args, args, stage="numllm-merge", extra={"base_model": base})
    tokenizer = causal_tokenizer(CausalLMArguments(base, model_args.tokenizer_name, model_args.trust_remote_code))
    model = load_adapters(load_causal_lm(base, model_args.trust_remote_code), args.adapters)
    weights = args.weights or [1.0] * len(args.adapters)
    if len(args.adapters) > 1:
        fuse_adapters(model, weights, args.combination_type, args.svd_rank, args.density)
    elif weights[0] != 1.0:
        raise ConfigError("numllm merge: a single adapter merges with weight 1 (drop --weights)")
    model.eval()
    with_adapter = probe_logits(model, tokenizer)
    merged = model.merge_and_unload()
    difference = float((probe_logits(merged, tokenizer) - with_adapter).abs().max())
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    metrics = {
        "base_model": base, "adapters": args.adapters, "weights": weights,
        "combination_type": args.combination_type if len(args.adapters) > 1 else "single",
        "svd_rank": args.svd_rank, "merge_max_logit_difference": difference,
    }
    logger.info("merged %d adapter(s) into %s (%s); probe logits differ from the active adapter by %.2e",
                len(args.adapters), base, metrics["combination_type"], difference)
    return write_metrics(output_dir, metrics)
