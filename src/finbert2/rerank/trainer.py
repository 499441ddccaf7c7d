"""Cross-encoder fine-tuning on the HF Trainer: the listwise loss in ``compute_loss``, two-stage retrieval
metrics on a validation folder in ``evaluate`` (both public hooks).

    sh Fin-retriever/rerank_finetune.sh configs/reranker/tiny.yaml --output_dir runs/reranker

The output folder is an ``AutoModelForSequenceClassification`` folder of one logit that
``sentence_transformers.CrossEncoder(output_dir)`` loads and scores identically, plus run_config.json,
loss_log.csv, loss.png, run.log and metrics.json (with the collapse guard's verdict).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, EarlyStoppingCallback, Trainer, set_seed

from finbert2.data import RetrievalEvalData, read_retrieval_eval, read_retrieval_train, write_json
from finbert2.errors import ConfigError
from finbert2.guards import chance_loss_collapse, record_collapse
from finbert2.modeling import ModelArguments, load_model, tokenizer_for
from finbert2.rerank.evaluate import rerank_run
from finbert2.rerank.modeling import CrossEncoderScorer, listwise_loss, score_collapse
from finbert2.retrieve.data import ContrastiveGroupDataset
from finbert2.retrieve.evaluate import bm25_evaluation
from finbert2.retrieve.metrics import evaluate_run
from finbert2.retrieve.trainer import EpochCallback, RetrievalValidation, with_validation
from finbert2.training import grouped_parameters, logged_evaluation

logger = logging.getLogger("finbert2.rerank")

INITIAL_EVAL_FILE = "initial_eval.json"  # the untrained reranker's validation scores, kept for resumed runs


@dataclass
class PairCollator:
    """Groups ``{query, passages}`` to one batch of ``groups x group size`` tokenized pairs."""

    tokenizer: Any
    max_len: int = 256

    def __call__(self, groups: list[dict[str, Any]]) -> dict[str, Any]:
        queries = [g["query"] for g in groups for _ in g["passages"]]
        passages = [p for g in groups for p in g["passages"]]
        features = self.tokenizer(queries, passages, padding=True, truncation=True, max_length=self.max_len,
                                  return_tensors="pt")
        return {**features, "group_size": len(groups[0]["passages"])}


class RerankerTrainer(RetrievalValidation, Trainer):
    """``Trainer`` over a one-logit sequence classifier; ``eval_dataset`` is a ``RetrievalEvalData`` folder."""

    def __init__(self, *args, eval_top_k: int = 20, max_len: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_top_k, self.max_len = eval_top_k, max_len
        self._first_stage: dict[int, dict] = {}  # id(eval data) -> BM25's run on it, computed once
        # modules the checkpoint lacked (from_pretrained_quietly records them; none for a from-scratch model)
        self.new_modules = tuple(getattr(self.model, "new_module_names", None) or ())

    def is_new_parameter(self, name: str) -> bool:
        return any(name == module or name.startswith(module + ".") for module in self.new_modules)

    def create_optimizer(self, model=None):
        """The new head at ``head_learning_rate``, the encoder at ``learning_rate`` (one schedule scales both)."""
        if self.args.head_learning_rate is None or not self.new_modules or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        groups = grouped_parameters(opt_model, set(self.get_decay_parameter_names(opt_model)), self.args.weight_decay,
                                    self.args.head_learning_rate, self.args.learning_rate, self.is_new_parameter)
        logger.info("learning rate %g for the new %s, %g for the encoder", self.args.head_learning_rate,
                    ", ".join(self.new_modules), self.args.learning_rate)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        group_size = inputs.pop("group_size")
        outputs = model(**inputs)
        loss = listwise_loss(outputs.logits.view(-1, group_size))
        return (loss, outputs) if return_outputs else loss

    def retrieval_metrics(self, data: RetrievalEvalData) -> dict[str, float]:
        """nDCG/MRR/recall/MAP of BM25's top ``eval_top_k`` reranked by the model as it is now."""
        if id(data) not in self._first_stage:
            self._first_stage[id(data)] = bm25_evaluation(data, max(self.eval_top_k, 100))[2]
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        scorer = CrossEncoderScorer(model, self.processing_class, max_length=self.max_len, device=self.args.device,
                                    bf16=bool(self.args.bf16))
        run, _ = rerank_run(scorer, data, self._first_stage[id(data)], self.eval_top_k)
        model.train(was_training)
        return evaluate_run(data.qrels, run)


def training_pair_logits(model, tokenizer, rows: list[dict], max_len: int, device, seed: int,
                         sample: int = 64) -> tuple[np.ndarray, float]:
    """The trained model's logits over the pairs of (up to) ``sample`` training rows, and the share of
    those rows whose positive outscores every negative (the collapse guard's evidence)."""
    picked = random.Random(seed).sample(rows, min(sample, len(rows)))
    scorer = CrossEncoderScorer(model, tokenizer, max_length=max_len, device=device)
    logits, first = [], 0
    for row in picked:
        scores = scorer.score(row["query"], [row["pos"][0], *(row.get("neg") or [])], raw=True)
        logits.extend(scores.tolist())
        first += int(len(scores) < 2 or scores[0] > scores[1:].max())
    model.train()
    return np.asarray(logits), first / max(1, len(picked))


def run_training(model_args: ModelArguments, data_args, training_args, run_args) -> dict[str, Any]:
    from finbert2.run import peak_memory_mb, prepare_output_dir, setup_logging, write_metrics, write_run_config
    from finbert2.training import plot_loss_curves, resume_checkpoint, standard_callbacks

    started = time.perf_counter()
    # Validate all input before output_dir is touched.
    rows = read_retrieval_train(data_args.train_data, require_neg=True)
    if data_args.max_train_samples:
        rows = rows[: data_args.max_train_samples]
    eval_data = read_retrieval_eval(data_args.eval_data, data_args.eval_split) if data_args.eval_data else None
    world = max(1, training_args.world_size)
    if len(rows) < training_args.per_device_train_batch_size * world:
        raise ConfigError(f"{data_args.train_data[0]}: {len(rows)} rows, fewer than one batch "
                          f"({training_args.per_device_train_batch_size} x {world} processes)")
    tokenizer = tokenizer_for(model_args)
    # Saved with the model (and every checkpoint): CrossEncoder(path), rerank evaluate/predict, export and serve
    # then cut pairs where training did, unless told otherwise.
    tokenizer.model_max_length = data_args.max_len
    if eval_data is not None:
        training_args = with_validation(training_args)
    if training_args.should_save:
        prepare_output_dir(training_args.output_dir, overwrite=run_args.overwrite_output_dir)
    setup_logging(training_args.output_dir if training_args.process_index == 0 else None)
    set_seed(training_args.seed)
    model = load_model(AutoModelForSequenceClassification, model_args, tokenizer, num_labels=1)
    if training_args.should_save:
        write_run_config(training_args.output_dir, model_args, data_args, training_args, run_args, stage="rerank train")

    dataset = ContrastiveGroupDataset(rows, data_args.train_group_size, seed=training_args.seed)
    callbacks = [*standard_callbacks(training_args.output_dir), EpochCallback(dataset)]
    # Early stopping needs periodic evaluations: with eval_strategy "no" the validation runs once, before training.
    if eval_data is not None and training_args.early_stopping_patience and training_args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    trainer = RerankerTrainer(model=model, args=training_args, train_dataset=dataset, eval_dataset=eval_data,
                              data_collator=PairCollator(tokenizer, data_args.max_len), processing_class=tokenizer,
                              callbacks=callbacks, eval_top_k=data_args.eval_top_k, max_len=data_args.max_len)
    logger.info("training on %d groups of %d pairs (1 positive + %d hard negatives), batch %d x %d process(es)",
                len(rows), data_args.train_group_size, data_args.train_group_size - 1,
                training_args.per_device_train_batch_size, world)
    checkpoint = resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    initial: dict[str, float] = {}
    if eval_data is not None:  # the untrained (zero-shot) reranker's row, kept across a resume
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
    if eval_data is not None:
        metrics.update(logged_evaluation(trainer.state, training_args) or trainer.evaluate())
        if trainer.state.best_model_checkpoint:
            metrics["best_model_checkpoint"] = trainer.state.best_model_checkpoint
            metrics["best_metric"] = trainer.state.best_metric
    if training_args.should_save:
        output_dir = training_args.output_dir
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        plot_loss_curves(output_dir, title="reranker: listwise loss")
        logits, positive_first = training_pair_logits(model, tokenizer, rows, data_args.max_len,
                                                      training_args.device, training_args.seed)
        metrics["train_score_std"], collapse = score_collapse(logits)
        metrics["train_positive_first"] = positive_first
        logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        record_collapse(metrics, [collapse, chance_loss_collapse(logged[-1] if logged else None,
                                                                 data_args.train_group_size)])
        metrics.update({"train_groups": len(rows), "train_group_size": data_args.train_group_size,
                        "chance_loss": math.log(data_args.train_group_size), "world_size": world,
                        "total_seconds": time.perf_counter() - started, "peak_memory_mb": peak_memory_mb()})
        metrics = write_metrics(output_dir, metrics)
        logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False, default=str))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return metrics
