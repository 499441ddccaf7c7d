"""Contrastive fine-tuning on the HF Trainer: the loss in ``compute_loss``, gradient caching in
``training_step``, retrieval metrics on a validation folder in ``evaluate`` (all public hooks).

    sh Fin-retriever/contrastive_finetune.sh configs/retriever/tiny.yaml --output_dir runs/retriever
    torchrun --nproc_per_node 2 -m finbert2.retrieve train configs/retriever/tiny.yaml \\
        --negatives_cross_device True --use_cpu True --output_dir runs/retriever_ddp

The output folder is an HF encoder folder (``AutoModel.from_pretrained``) and a sentence-transformers
model (``SentenceTransformer(output_dir)``), plus run_config.json, loss_log.csv, loss.png, run.log,
eval_results.md and metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, Trainer, TrainerCallback, set_seed

from finbert2.data import RetrievalEvalData, read_retrieval_eval, read_retrieval_train, write_json
from finbert2.errors import ConfigError
from finbert2.modeling import ModelArguments, load_model, tokenizer_for
from finbert2.retrieve.data import ContrastiveCollator, ContrastiveGroupDataset
from finbert2.guards import chance_loss_collapse, embedding_collapse, record_collapse
from finbert2.retrieve.encoder import (
    DenseEncoder,
    default_prompts,
    resolve_prompts,
    save_retrieval_lengths,
    save_sentence_transformer,
    saved_sentence_settings,
)
from finbert2.retrieve.evaluate import dense_evaluation
from finbert2.retrieve.modeling import BiEncoder, grad_cache_step
from finbert2.training import logged_evaluation

logger = logging.getLogger("finbert2.retrieve")

INITIAL_EVAL_FILE = "initial_eval.json"  # the validation scores before training, kept for resumed runs


class RetrievalValidation:
    """``evaluate`` on a ``RetrievalEvalData`` folder through the trainer's own ``retrieval_metrics`` (any other
    evaluation set goes to the Trainer's): shared by the retriever's and the reranker's trainers."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(data, RetrievalEvalData):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        started = time.perf_counter()
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.retrieval_metrics(data).items()}
        metrics[f"{metric_key_prefix}_runtime"] = time.perf_counter() - started
        metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class RetrieverTrainer(RetrievalValidation, Trainer):
    """``Trainer`` over a ``BiEncoder``; ``eval_dataset`` is a ``RetrievalEvalData`` folder."""

    def __init__(self, *args, query_instruction: str = "", passage_instruction: str = "", eval_max_len: int = 512,
                 eval_query_max_len: int | None = None, eval_k: int = 100, **kwargs):
        super().__init__(*args, **kwargs)
        self.query_instruction = query_instruction
        self.passage_instruction = passage_instruction
        self.eval_max_len = eval_max_len
        self.eval_query_max_len = eval_query_max_len
        self.eval_k = eval_k

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(query=inputs["query"], passage=inputs["passage"], query_ids=inputs.get("query_ids"),
                        passage_ids=inputs.get("passage_ids"), positive_ids=inputs.get("positive_ids"))
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.args.grad_cache:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        device = self.args.device
        query = {k: v.to(device) for k, v in inputs["query"].items()}
        passage = {k: v.to(device) for k, v in inputs["passage"].items()}
        bi_encoder = self.accelerator.unwrap_model(model)
        scale = 1.0 / self.current_gradient_accumulation_steps
        no_sync = getattr(model, "no_sync", None)  # DDP: all-reduce once, after the last chunk
        query_ids, passage_ids = inputs.get("query_ids"), inputs.get("passage_ids")
        positive_ids = inputs.get("positive_ids")

        def loss_fn(q_emb, p_emb):
            return bi_encoder.loss(q_emb, p_emb, query_ids, passage_ids, positive_ids)

        with self.compute_loss_context_manager():
            loss = grad_cache_step(model, query, passage, self.args.grad_cache_chunk_size, loss_fn,
                                   scale=scale, backward=self.accelerator.backward, no_sync=no_sync)
        return loss * scale

    def retrieval_metrics(self, data: RetrievalEvalData) -> dict[str, float]:
        """nDCG/MRR/recall/MAP of the model as it is now on a validation folder."""
        bi_encoder = self.accelerator.unwrap_model(self.model)
        was_training = bi_encoder.training
        encoder = DenseEncoder(bi_encoder.encoder, self.processing_class, pooling=bi_encoder.pooling,
                               normalize=bi_encoder.normalize, query_instruction=self.query_instruction,
                               passage_instruction=self.passage_instruction,
                               max_length=self.eval_max_len, query_max_length=self.eval_query_max_len,
                               device=str(self.args.device),
                               bf16=self.args.bf16)
        mean, _, _ = dense_evaluation(encoder, data, self.eval_k)
        bi_encoder.train(was_training)
        return mean


class EpochCallback(TrainerCallback):
    """Tell the dataset the epoch, so each epoch draws other negatives."""

    def __init__(self, dataset: ContrastiveGroupDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


def build_bi_encoder(model_args: ModelArguments, tokenizer, training_args) -> BiEncoder:
    """The encoder (pooler dropped: CLS pooling reads the raw [CLS] state) inside a ``BiEncoder``."""
    extra = {} if model_args.model_name_or_path is None else {"add_pooling_layer": False}
    encoder = load_model(AutoModel, model_args, tokenizer, **extra)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return BiEncoder(encoder, temperature=training_args.temperature, pooling=training_args.pooling,
                     normalize=training_args.normalized,
                     negatives_cross_device=training_args.negatives_cross_device)


def passage_sample_vectors(model: BiEncoder, tokenizer, rows: list[dict], data_args, training_args,
                           sample: int = 256):
    """The trained encoder's vectors of (up to) ``sample`` distinct training passages, for the collapse check."""
    passages = list(dict.fromkeys(p for row in rows for p in [*row["pos"], *(row.get("neg") or [])]))
    passages = random.Random(training_args.seed).sample(passages, min(sample, len(passages)))
    encoder = DenseEncoder(model.encoder, tokenizer, pooling=model.pooling, normalize=model.normalize,
                           passage_instruction=data_args.passage_instruction_for_retrieval,
                           max_length=data_args.passage_max_len, device=str(training_args.device))
    vectors = encoder.encode_passages(passages)
    model.train()
    return vectors


def with_validation(training_args):
    """``training_args`` set to evaluate on the validation folder and keep the best checkpoint.

    The settings are changed through ``dataclasses.replace``, so ``TrainingArguments`` validates
    them as it validates a user's own (evaluation and save steps aligned for
    ``load_best_model_at_end``): evaluation follows the save schedule when none was given.
    """
    changes: dict[str, Any] = {}
    if training_args.eval_strategy == "no":
        if training_args.save_strategy in ("steps", "epoch"):
            changes["eval_strategy"] = str(getattr(training_args.save_strategy, "value", training_args.save_strategy))
            if changes["eval_strategy"] == "steps":
                changes["eval_steps"] = training_args.save_steps
        else:
            changes.update(eval_strategy="epoch", save_strategy="epoch")
    if training_args.metric_for_best_model is None:
        changes.update(metric_for_best_model="ndcg_at_10", greater_is_better=True)
    if not training_args.load_best_model_at_end:
        changes["load_best_model_at_end"] = True
    if not changes:
        return training_args
    try:
        replaced = dataclasses.replace(training_args, **changes)
    except ValueError as err:
        raise ConfigError(f"retrieve train: eval_data given, but {str(err).splitlines()[0]}") from None
    if hasattr(training_args, "precision"):  # the resolved bool came back as "true": keep what was asked and why
        replaced.precision = training_args.precision
    return replaced


def early_stopping(patience: int, has_validation: bool, training_args) -> list[TrainerCallback]:
    """Transformers' early stopping on the validation metric, when asked and there is validation data."""
    if patience <= 0 or not has_validation:
        return []
    from transformers import EarlyStoppingCallback

    training_args.restore_callback_states_from_checkpoint = True  # a resumed run keeps its patience count
    return [EarlyStoppingCallback(early_stopping_patience=patience)]


def resolve_query_max_len(tokenizer, queries: list[str], requested: int | None, ceiling: int,
                          multiple_of: int | None = None) -> tuple[int, str]:
    """``(query token limit, a log line)``: the one asked for, else the longest training query (prompt and
    special tokens included) up to ``ceiling``, rounded up to ``multiple_of`` (the tokenizer refuses a cut that
    padding to a multiple would overrun); the line says how many training queries the limit cuts."""
    lengths = [len(ids) for ids in tokenizer(queries, add_special_tokens=True, return_attention_mask=False,
                                             return_token_type_ids=False)["input_ids"]] or [1]
    limit = requested
    if limit is None:
        limit = min(max(lengths), ceiling)
        if multiple_of:
            limit = min(-(-limit // multiple_of) * multiple_of, max(ceiling // multiple_of * multiple_of, multiple_of))
    cut = sum(1 for n in lengths if n > limit)
    note = (f"query_max_len {limit}: covers every training query (longest {max(lengths)} tokens)" if not cut else
            f"query_max_len {limit} cuts {cut} of {len(lengths)} training queries (longest {max(lengths)} tokens)")
    return limit, note


def run_training(model_args: ModelArguments, data_args, training_args, run_args) -> dict[str, Any]:
    from finbert2.run import peak_memory_mb, prepare_output_dir, setup_logging, write_metrics, write_run_config
    from finbert2.training import LossLogCallback, plot_loss_curves, plot_validation_curve, resume_checkpoint

    started = time.perf_counter()
    # Validate all input before output_dir is touched.
    rows = read_retrieval_train(data_args.train_data, require_neg=data_args.train_group_size > 1)
    if data_args.max_train_samples:
        rows = rows[: data_args.max_train_samples]
    eval_data = read_retrieval_eval(data_args.eval_data, data_args.eval_split) if data_args.eval_data else None
    world = max(1, training_args.world_size)
    if len(rows) < training_args.per_device_train_batch_size * world:
        raise ConfigError(f"{data_args.train_data[0]}: {len(rows)} rows, fewer than one batch "
                          f"({training_args.per_device_train_batch_size} x {world} processes)")
    tokenizer = tokenizer_for(model_args)
    if eval_data is not None:
        training_args = with_validation(training_args)
    # Prompts and pooling not given follow the starting model's saved ones (e5: query:/passage:, mean).
    start = saved_sentence_settings(model_args.model_name_or_path) if model_args.model_name_or_path else {}
    data_args.query_instruction_for_retrieval, data_args.passage_instruction_for_retrieval = resolve_prompts(
        model_args.model_name_or_path, data_args.query_instruction_for_retrieval,
        data_args.passage_instruction_for_retrieval)
    training_args.pooling = training_args.pooling or start.get("pooling", "cls")
    data_args.query_max_len, query_length_note = resolve_query_max_len(
        tokenizer, [data_args.query_instruction_for_retrieval + r["query"] for r in rows], data_args.query_max_len,
        data_args.passage_max_len, data_args.pad_to_multiple_of)

    if training_args.should_save:
        prepare_output_dir(training_args.output_dir, overwrite=run_args.overwrite_output_dir)
    if training_args.process_index == 0:
        setup_logging(training_args.output_dir)
    else:
        setup_logging()
    set_seed(training_args.seed)
    model = build_bi_encoder(model_args, tokenizer, training_args)
    if training_args.should_save:
        write_run_config(training_args.output_dir, model_args, data_args, training_args, run_args,
                         stage="retrieve train")
    logger.info("pooling %s; query prompt %r; passage prompt %r", training_args.pooling,
                data_args.query_instruction_for_retrieval, data_args.passage_instruction_for_retrieval)
    logger.info(query_length_note)

    dataset = ContrastiveGroupDataset(rows, data_args.train_group_size, data_args.query_instruction_for_retrieval,
                                      data_args.passage_instruction_for_retrieval, training_args.seed)
    collator = ContrastiveCollator(tokenizer, data_args.query_max_len, data_args.passage_max_len,
                                   data_args.pad_to_multiple_of)
    # the validation score beside the loss in loss_log.csv: the curve a learning-rate choice is read from
    validation_metric = None
    if eval_data is not None:
        validation_metric = training_args.metric_for_best_model
        validation_metric = validation_metric if validation_metric.startswith("eval_") else f"eval_{validation_metric}"
    trainer = RetrieverTrainer(
        model=model, args=training_args, train_dataset=dataset, eval_dataset=eval_data,
        data_collator=collator, processing_class=tokenizer,
        callbacks=[LossLogCallback(training_args.output_dir, extra_fields=[validation_metric] if validation_metric else None),
                   EpochCallback(dataset),
                   *early_stopping(data_args.early_stopping_patience, eval_data is not None, training_args)],
        query_instruction=data_args.query_instruction_for_retrieval,
        passage_instruction=data_args.passage_instruction_for_retrieval, eval_max_len=data_args.passage_max_len,
        eval_query_max_len=data_args.query_max_len, eval_k=data_args.eval_k,
    )
    logger.info("training on %d groups of %d passages, batch %d x %d process(es), cross-device negatives: %s, "
                "grad cache: %s", len(rows), data_args.train_group_size, training_args.per_device_train_batch_size,
                world, training_args.negatives_cross_device, training_args.grad_cache)
    checkpoint = resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    initial: dict[str, float] = {}
    if eval_data is not None:  # the untrained starting model's row, kept across a resume
        initial_path = Path(training_args.output_dir) / INITIAL_EVAL_FILE
        if checkpoint and initial_path.is_file():
            initial = json.loads(initial_path.read_text(encoding="utf-8"))
        else:
            initial = {f"initial_eval_{k}": v for k, v in trainer.retrieval_metrics(eval_data).items()}
            if training_args.should_save:
                write_json(initial_path, initial)
        logger.info("validation before training: %s", json.dumps({k: round(v, 4) for k, v in initial.items()}))
    result = trainer.train(resume_from_checkpoint=checkpoint)

    metrics: dict[str, Any] = {**result.metrics, **initial}
    if eval_data is not None:  # the kept model's scores: logged when it was evaluated, else computed now
        metrics.update(logged_evaluation(trainer.state, training_args) or trainer.evaluate())
        if trainer.state.best_model_checkpoint:
            metrics["best_model_checkpoint"] = trainer.state.best_model_checkpoint
            metrics["best_metric"] = trainer.state.best_metric
    if training_args.should_save:
        output_dir = training_args.output_dir
        model.encoder.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        prompts = {**start.get("prompts", {}), **default_prompts(data_args.query_instruction_for_retrieval,
                                                                 data_args.passage_instruction_for_retrieval)}
        save_sentence_transformer(output_dir, prompts, max_seq_length=data_args.passage_max_len,
                                  pooling=training_args.pooling, normalize=training_args.normalized)
        save_retrieval_lengths(output_dir, data_args.query_max_len, data_args.passage_max_len)
        plot_loss_curves(output_dir, title="retriever: contrastive loss")
        if validation_metric:
            plot_validation_curve(output_dir, validation_metric, initial.get(f"initial_{validation_metric}"))
        metrics.update({"train_groups": len(rows), "train_group_size": data_args.train_group_size,
                        "query_max_len": data_args.query_max_len,
                        "passages_per_query": model.passages_scored,
                        "chance_loss": math.log(model.passages_scored),
                        "world_size": world, "total_seconds": time.perf_counter() - started,
                        "peak_memory_mb": peak_memory_mb()})
        logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        metrics["passage_mean_cosine"], collapse = embedding_collapse(
            passage_sample_vectors(model, tokenizer, rows, data_args, training_args))
        record_collapse(metrics, [collapse, chance_loss_collapse(logged[-1] if logged else None,
                                                                 model.passages_scored)])
        metrics = write_metrics(output_dir, metrics)
        logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False, default=str))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return metrics
