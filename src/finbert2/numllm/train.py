"""``finbert2 numllm train``: one LoRA module (peft) on a causal LM, domain or numeric.

    sh Fin-numllm/run_domain_lora.sh configs/numllm/tiny.yaml --output_dir runs/numllm/domain
    sh Fin-numllm/run_numeric_lora.sh configs/numllm/tiny.yaml --output_dir runs/numllm/numeric
    torchrun --nproc_per_node 2 -m finbert2.numllm train configs/numllm/gemma-270m.yaml --use_cpu True ...

The output folder is a peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``, its
base recorded) with the tokenizer, ``checkpoint-*`` folders an interrupted run resumes from,
``loss_log.csv``/``loss.png``, ``run_config.json``, ``run.log`` and, last, ``metrics.json``
(held-out loss before and after, perplexity for the domain module).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

from finbert2.data.readers import iter_corpus_lines
from finbert2.errors import ConfigError, OutputDirError
from finbert2.modeling import check_weights_format, from_pretrained_quietly, load_tokenizer
from finbert2.numllm.args import CausalLMArguments, LoraArguments, NumLLMDataArguments
from finbert2.numllm.data import LabelledPositionsCollator, build_sequences
from finbert2.numllm.tiny import cached_tiny_causal_lm
from finbert2.run import (
    METRICS_FILE,
    RunArguments,
    is_finished_run,
    peak_memory_mb,
    start_training_run,
    write_metrics,
)
from finbert2.training import plot_loss_curves, resume_checkpoint, standard_callbacks

logger = logging.getLogger("finbert2.numllm")

INITIAL_EVAL_FILE = "initial_eval.json"  # held-out loss before training, kept for resumed runs
ITEMS_DIR = "items"  # the training data built from input_data when no train_data is given


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False):
    """A causal LM in float32 from a folder (safetensors only) or hub id."""
    check_weights_format(name_or_path)
    return from_pretrained_quietly(AutoModelForCausalLM, name_or_path, dtype=torch.float32,
                                   trust_remote_code=trust_remote_code, use_safetensors=True)


def causal_tokenizer(model_args: CausalLMArguments):
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token_id is None:  # Llama/Qwen-style tokenizers without one: pads are never targets
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_model(model, lora_args: LoraArguments):
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    absent = [m for m in lora_args.lora_target_modules if m not in names]
    if absent:
        raise ConfigError(f"numllm: lora_target_modules {', '.join(absent)} are not modules of "
                          f"{type(model).__name__}")
    config = LoraConfig(task_type="CAUSAL_LM", r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha,
                        lora_dropout=lora_args.lora_dropout, target_modules=list(lora_args.lora_target_modules))
    return get_peft_model(model, config)


def build_training_data(data_args: NumLLMDataArguments, items_dir: Path, training_args: TrainingArguments) -> None:
    """Point ``data_args`` at build-numeric's output for ``data_args.input_data``, written into ``items_dir``
    (by the main process; seeded, so the domain and numeric runs of one corpus split it alike)."""
    from finbert2.numllm.args import BuildNumericArguments
    from finbert2.numllm.numeric_items import numeric_item_splits, write_numeric_items

    build_args = BuildNumericArguments(output_dir=str(items_dir), input_data=data_args.input_data,
                                       text_field=data_args.text_field,
                                       heldout_percentage=data_args.validation_split_percentage, seed=training_args.seed)
    if training_args.process_index == 0:
        counts = write_numeric_items(*numeric_item_splits(build_args), items_dir)
        logger.info("built the training data from %s into %s: %s", ", ".join(data_args.input_data), items_dir,
                    json.dumps(counts))
    training_args.distributed_state.wait_for_everyone()
    suffix = "_text" if data_args.task == "domain" else ""
    data_args.train_data = [str(items_dir / f"train{suffix}.jsonl")]
    heldout = items_dir / f"heldout{suffix}.jsonl"
    data_args.eval_data = [str(heldout)] if heldout.is_file() else None
    data_args.text_field = "text"  # the document files written above


def tiny_lm_texts(data_args: NumLLMDataArguments) -> list[str]:
    """What a from-scratch causal LM's tokenizer learns from: the first documents of input_data, else of
    train_data (the numeric task: its prompts and answers)."""
    from finbert2.numllm.data import read_prompt_answer_items
    from finbert2.numllm.tiny import TOKENIZER_TEXTS

    if data_args.input_data or data_args.task == "domain":
        lines = iter_corpus_lines(data_args.input_data or data_args.train_data, data_args.text_field)
        return [text for _, _, text in itertools.islice(lines, TOKENIZER_TEXTS)]
    return [prompt + answer for prompt, answer in read_prompt_answer_items(data_args.train_data)[:TOKENIZER_TEXTS]]


def held_out_loss(trainer: Trainer, dataset: list) -> float | None:
    if not dataset:
        return None
    return round(float(trainer.evaluate(dataset)["eval_loss"]), 6)


def run_train(model_args: CausalLMArguments, lora_args: LoraArguments, data_args: NumLLMDataArguments,
              training_args: TrainingArguments, run_args: RunArguments) -> dict:
    output_dir = Path(training_args.output_dir)
    if is_finished_run(output_dir) and not run_args.overwrite_output_dir:
        raise OutputDirError(f"{output_dir}: holds a finished run ({METRICS_FILE}); pass --overwrite_output_dir "
                             "True to replace it, or choose another --output_dir")
    if not data_args.train_data:
        build_training_data(data_args, output_dir / ITEMS_DIR, training_args)
    if not model_args.model_name_or_path:
        model_args.model_name_or_path = str(cached_tiny_causal_lm(
            tiny_lm_texts(data_args), model_args.tiny_hidden_size, model_args.tiny_num_hidden_layers,
            model_args.tiny_vocab_size, training_args.seed))
        logger.info("no model_name_or_path: starting from a random tiny causal LM, %s", model_args.model_name_or_path)
    tokenizer = causal_tokenizer(model_args)
    train_set, eval_set, summary = build_sequences(data_args, tokenizer, training_args.seed)

    is_main = start_training_run(output_dir, training_args, run_args, model_args, lora_args, data_args,
                                 stage=f"numllm-{data_args.task}", data_summary=summary)

    set_seed(training_args.seed)
    model = lora_model(load_causal_lm(model_args.model_name_or_path, model_args.trust_remote_code), lora_args)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d on %s: %d trainable of %d parameters", lora_args.lora_r,
                ",".join(lora_args.lora_target_modules), trainable, total)
    training_args.remove_unused_columns = False  # logits_to_keep / shift_labels are model inputs
    training_args.prediction_loss_only = True
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set or None,
                      data_collator=LabelledPositionsCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=standard_callbacks(output_dir, run_args.skip_nonfinite_steps))

    checkpoint = resume_checkpoint(output_dir, training_args.resume_from_checkpoint)
    initial_path = output_dir / INITIAL_EVAL_FILE
    if checkpoint and initial_path.is_file():
        initial = json.loads(initial_path.read_text(encoding="utf-8"))["eval_loss"]
    else:
        initial = held_out_loss(trainer, eval_set)
        if is_main:
            initial_path.write_text(json.dumps({"eval_loss": initial}), encoding="utf-8")
    logger.info("held-out loss before training: %s", initial)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    final = held_out_loss(trainer, eval_set)
    logger.info("held-out loss after training: %s", final)

    metrics = {
        "task": data_args.task,
        "train_loss": result.metrics.get("train_loss"),
        "eval_loss": final,
        "initial_eval_loss": initial,
        "train_runtime": result.metrics.get("train_runtime", time.perf_counter() - started),
        "global_step": trainer.state.global_step,
        "trainable_parameters": trainable,
        "parameters": total,
        "bf16": bool(training_args.bf16),
        "world_size": training_args.world_size,
        "peak_memory_mb": peak_memory_mb(),
        **summary,
    }
    if data_args.task == "domain" and final is not None:
        metrics["perplexity"] = math.exp(min(final, 50.0))
        metrics["initial_perplexity"] = math.exp(min(initial, 50.0))
    if is_main:
        trainer.save_state()
        trainer.model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        plot_loss_curves(output_dir, title=f"numllm {data_args.task}: {output_dir.name}")
        metrics = write_metrics(output_dir, metrics)
        logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False))
    training_args.distributed_state.wait_for_everyone()
    return metrics
