"""The run both pretraining stages share: validate, build data and model, train (resuming), evaluate, save.

A stage supplies its model class, its collator and the loss components it reports; this module
does the rest the same way for both, on top of the transformers ``Trainer``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed

from finbert2.errors import ConfigError, OutputDirError
from finbert2.guards import embedding_collapse, record_collapse
from finbert2.modeling import ModelArguments, load_model, tokenizer_for
from finbert2.pretrain.args import PretrainDataArguments
from finbert2.pretrain.data import EpochMaskedDataset, PretrainDataset, build_datasets
from finbert2.pretrain.modeling import save_encoder
from finbert2.retrieve.encoder import inherit_sentence_settings
from finbert2.run import (
    METRICS_FILE,
    peak_memory_mb,
    RunArguments,
    is_finished_run,
    start_training_run,
    write_metrics,
)
from finbert2.training import (
    LossLogCallback,
    NonFiniteGuardCallback,
    plot_loss_curves,
    resume_checkpoint,
)

logger = logging.getLogger("finbert2.pretrain")

INITIAL_EVAL_FILE = "initial_eval.json"  # the held-out losses before training, kept for resumed runs


class PretrainTrainer(Trainer):
    """``Trainer`` that also logs the loss components a model returns (RetroMAE: encoder and decoder).

    Only public hooks are overridden: ``compute_loss`` notes the components of each training
    batch, ``log`` adds their mean since the previous log line.
    """

    def __init__(self, *args, loss_components: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_components = tuple(loss_components)
        self._component_sums = {name: 0.0 for name in self.loss_components}
        self._component_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.loss_components:
            for name in self.loss_components:
                self._component_sums[name] += float(outputs[name])
            self._component_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_count:
            for name in self.loss_components:
                logs[name] = round(self._component_sums[name] / self._component_count, 4)
                self._component_sums[name] = 0.0
            self._component_count = 0
        super().log(logs, start_time)


class EpochCallback(TrainerCallback):
    """Tell the training set which epoch starts, so its masks are redrawn (resumed runs included)."""

    def __init__(self, dataset: EpochMaskedDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the float epoch reached (e.g. 0.5 on a mid-epoch resume, 1.0 after epoch 0)
        self.dataset.set_epoch(int((state.epoch or 0.0) + 1e-6))


class _SessionTokens(TrainerCallback):
    """Tokens seen before this session (a resumed run continues the count) for tokens/s of the session."""

    def __init__(self):
        self.at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_start = state.num_input_tokens_seen


def build_model(model_class, model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, seed: int):
    """The stage's model: from a checkpoint (embeddings grown to an extended vocab) or from scratch."""
    set_seed(seed)  # a from-scratch model's initial weights depend on the seed only
    return load_model(model_class, model_args, tokenizer, grow_embeddings=True)


@torch.no_grad()
def evaluate_losses(trainer: Trainer, dataset: PretrainDataset, components: Sequence[str]) -> dict[str, float]:
    """Mean held-out ``loss`` and components over the batches of ``dataset`` (pre-masked: deterministic)."""
    if len(dataset) == 0:
        return {}
    names = ("loss", *components)
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(names), dtype=torch.float64)
    count = 0
    for batch in trainer.get_eval_dataloader(dataset):
        batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
        with trainer.autocast_smart_context_manager():
            outputs = model(**batch)
        values = torch.stack([outputs[n].detach().float().reshape(()) for n in names])
        weight = torch.tensor(float(batch["input_ids"].shape[0]), device=values.device)
        gathered = trainer.accelerator.gather(torch.cat([values * weight, weight[None]])[None]).reshape(-1, len(names) + 1)
        sums += gathered[:, :-1].sum(0).double().cpu()
        count += int(gathered[:, -1].sum())
    model.train(was_training)
    means = (sums / max(count, 1)).tolist()
    return {("eval_loss" if n == "loss" else f"eval_{n}"): round(v, 6) for n, v in zip(names, means)}


@torch.no_grad()
def sentence_vectors(model, dataset: PretrainDataset, pad_id: int, pooling: str = "mean", sample: int = 256,
                     batch_size: int = 32):
    """The encoder's pooled last-layer vectors of (up to) ``sample`` sequences, for the collapse check."""
    from finbert2.retrieve.encoder import pad_batch, pool

    encoder = model.bert
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    rows = [e["input_ids"] for e in dataset.examples[:sample]]
    vectors = []
    for start in range(0, len(rows), batch_size):
        ids, mask = (t.to(device) for t in pad_batch(rows[start:start + batch_size], pad_id))
        vectors.append(pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask, pooling).float().cpu())
    encoder.train(was_training)
    return torch.cat(vectors).numpy()


def run_pretraining(
    stage: str,
    model_args: ModelArguments,
    data_args: PretrainDataArguments,
    training_args: TrainingArguments,
    run_args: RunArguments,
    *,
    model_class,
    make_collators: Callable[[PreTrainedTokenizerBase, PretrainDataset, int], tuple[Callable, PretrainDataset]],
    loss_components: Sequence[str] = (),
    extra_args: Sequence = (),
    callbacks: Sequence[TrainerCallback] = (),
    configure_model: Callable | None = None,
    sentence_pooling: str | None = None,
) -> dict:
    """Train ``model_class`` on the corpus of ``data_args``; returns the metrics written to ``metrics.json``.

    ``make_collators(tokenizer, eval_dataset, seed)`` returns the collator (its ``mask_example``
    masks a training sequence when fetched, anew each epoch; its call pads a batch) and the
    evaluation set with its masks drawn once. ``configure_model`` adjusts the built model (RetroMAE:
    its sentence pooling). The saved encoder keeps the starting model's sentence-transformers
    settings (pooling, prompts; ``sentence_pooling`` overrides the pooling), so later stages embed
    it as it was pretrained.
    """
    output_dir = Path(training_args.output_dir)
    # Refuse a finished run before any work; everything else is validated before output_dir is touched.
    if is_finished_run(output_dir) and not run_args.overwrite_output_dir:
        raise OutputDirError(f"{output_dir}: holds a finished run ({METRICS_FILE}); pass --overwrite_output_dir "
                             "True to replace it, or choose another --output_dir")
    tokenizer = tokenizer_for(model_args)
    train_dataset, eval_dataset, data_summary = build_datasets(data_args, tokenizer, training_args.seed)
    if model_args.model_name_or_path is None and data_args.max_seq_length > model_args.tiny_max_position_embeddings:
        raise ConfigError(f"{stage}: max_seq_length exceeds tiny_max_position_embeddings")

    is_main = start_training_run(output_dir, training_args, run_args, model_args, data_args, *extra_args, stage=stage,
                                 data_summary=data_summary)

    model = build_model(model_class, model_args, tokenizer, training_args.seed)
    if configure_model is not None:
        configure_model(model)
    collator, eval_masked = make_collators(tokenizer, eval_dataset, training_args.seed)
    train_masked = EpochMaskedDataset(train_dataset, collator.mask_example, training_args.seed)
    # Count real (non-padding) tokens for train_tokens_per_second; keep every column for our collator.
    training_args.include_num_input_tokens_seen = "non_padding"
    training_args.remove_unused_columns = False
    session_tokens = _SessionTokens()
    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=train_masked,
        eval_dataset=eval_masked if len(eval_masked) else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[LossLogCallback(output_dir, extra_fields=list(loss_components)),
                   NonFiniteGuardCallback(output_dir, skip=run_args.skip_nonfinite_steps), EpochCallback(train_masked),
                   session_tokens, *callbacks],
        loss_components=loss_components,
    )

    checkpoint = resume_checkpoint(output_dir, training_args.resume_from_checkpoint)
    initial_path = output_dir / INITIAL_EVAL_FILE
    if checkpoint and initial_path.is_file():
        initial = json.loads(initial_path.read_text(encoding="utf-8"))
    else:
        initial = evaluate_losses(trainer, eval_masked, loss_components)
        if is_main:
            initial_path.write_text(json.dumps(initial, indent=2), encoding="utf-8")
    logger.info("held-out losses before training: %s", initial)

    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    session_seconds = time.perf_counter() - started
    final = evaluate_losses(trainer, eval_masked, loss_components)
    logger.info("held-out losses after training: %s", final)

    metrics: dict = {
        "train_loss": train_result.metrics.get("train_loss"),
        **{k: v for k, v in final.items()},
        **{f"initial_{k}": v for k, v in initial.items()},
        "train_runtime": train_result.metrics.get("train_runtime"),
        "train_tokens_per_second": (trainer.state.num_input_tokens_seen - session_tokens.at_start)
        / max(train_result.metrics.get("train_runtime") or session_seconds, 1e-9),
        "train_tokens_seen": trainer.state.num_input_tokens_seen,
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "world_size": training_args.world_size,
        "peak_memory_mb": peak_memory_mb(),
        **data_summary,
    }
    check_set = train_dataset if len(eval_dataset) < 2 else eval_dataset
    metrics["sentence_mean_cosine"], collapse = embedding_collapse(
        sentence_vectors(trainer.model, check_set, tokenizer.pad_token_id or 0, sentence_pooling or "mean"))
    record_collapse(metrics, [collapse])
    # The components under the names the issue asks for (encoder_mlm_loss, decoder_loss), held-out values.
    for name in loss_components:
        if f"eval_{name}" in final:
            metrics[name] = final[f"eval_{name}"]
    if is_main:
        trainer.save_state()
        save_encoder(trainer.model, tokenizer, output_dir)
        inherit_sentence_settings(model_args.model_name_or_path, output_dir, pooling=sentence_pooling,
                                  max_seq_length=min(tokenizer.model_max_length, model.config.max_position_embeddings))
        plot_loss_curves(output_dir, title=f"{stage}: {output_dir.name}")
    training_args.distributed_state.wait_for_everyone()
    return metrics


def finish(output_dir: str | Path, metrics: dict, is_main: bool) -> dict:
    """Write ``metrics.json`` (the finished marker, last) on the main process."""
    if is_main:
        metrics = write_metrics(output_dir, metrics)
        logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False))
    return metrics
