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
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed

from finbert2.errors import ConfigError, OutputDirError
from finbert2.guards import embedding_collapse, record_collapse
from finbert2.modeling import ModelArguments, load_model, tokenizer_for
from finbert2.pretrain.args import PretrainDataArguments
from finbert2.pretrain.data import EpochMaskedDataset, PretrainDataset, build_datasets
from finbert2.pretrain.headless import (
    HeadlessStartArguments,
    HeadWarmupCallback,
    RetrievalProbe,
    is_head_parameter,
    per_group_schedule,
    planned_steps,
    resolve_head_warmup,
    retrieval_damage,
    set_prior_bias,
    unigram_cross_entropy,
    unigram_log_prior,
    uses_prior_bias,
)
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
    grouped_parameters,
    logged_evaluation,
    plot_loss_curves,
    resume_checkpoint,
)

logger = logging.getLogger("finbert2.pretrain")

INITIAL_EVAL_FILE = "initial_eval.json"  # the held-out losses before training, kept for resumed runs
RECIPE_LOG_FIELDS = ["head_learning_rate", "encoder_learning_rate", "eval_ndcg_at_10"]  # loss_log.csv columns


class PretrainTrainer(Trainer):
    """``Trainer`` that also logs the loss components a model returns (RetroMAE: encoder and decoder),
    trains a new head and the encoder at their own learning rates, and scores zero-shot retrieval.

    Only public hooks are overridden: ``compute_loss`` notes the components of each training
    batch, ``log`` adds their mean since the previous log line; ``create_optimizer`` and
    ``create_scheduler`` give the head and the encoder their own learning rate and schedule (only when
    ``encoder_learning_rate`` or ``head_warmup_steps`` is set); ``evaluate`` adds the retrieval probe's
    metrics (``eval_ndcg_at_10``, usable as ``metric_for_best_model``).
    """

    def __init__(self, *args, loss_components: Sequence[str] = (), head_warmup_steps: int = 0,
                 encoder_learning_rate: float | None = None, retrieval_probe: RetrievalProbe | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_components = tuple(loss_components)
        self._component_sums = {name: 0.0 for name in self.loss_components}
        self._component_count = 0
        self.head_warmup_steps = head_warmup_steps
        self.encoder_learning_rate = encoder_learning_rate
        self.retrieval_probe = retrieval_probe

    @property
    def per_part_learning_rates(self) -> bool:
        return self.head_warmup_steps > 0 or self.encoder_learning_rate is not None

    def create_optimizer(self, model=None):
        if not self.per_part_learning_rates or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        encoder_lr = self.args.learning_rate if self.encoder_learning_rate is None else self.encoder_learning_rate
        groups = grouped_parameters(opt_model, set(self.get_decay_parameter_names(opt_model)), self.args.weight_decay,
                                    self.args.learning_rate, encoder_lr, is_head_parameter)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if not self.per_part_learning_rates or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = per_group_schedule(optimizer or self.optimizer, self.args, num_training_steps,
                                               self.head_warmup_steps)
        return self.lr_scheduler

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.retrieval_probe is not None and eval_dataset is None:
            encoder = self.accelerator.unwrap_model(self.model).bert
            scores = {f"{metric_key_prefix}_{k}": v
                      for k, v in self.retrieval_probe(encoder, self.args.device, self.args.bf16).items()}
            self.log(scores)
            metrics.update(scores)
        return metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.loss_components:
            for name in self.loss_components:
                self._component_sums[name] += float(outputs[name])
            self._component_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.per_part_learning_rates and self.lr_scheduler is not None:
            rates = {g.get("part"): lr for g, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr())}
            logs["encoder_learning_rate"] = rates.get("encoder", 0.0)
            logs["head_learning_rate"] = rates.get("head", 0.0)
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
def evaluate_losses(trainer: Trainer, dataset: PretrainDataset, components: Sequence[str],
                    local: bool = False) -> dict[str, float]:
    """Mean held-out ``loss`` and components over the batches of ``dataset`` (pre-masked: deterministic).
    ``local``: this process alone scores every batch (the merge runs on the main process only); otherwise
    the batches are shared among the processes and gathered."""
    if len(dataset) == 0:
        return {}
    names = ("loss", *components)
    if local:
        model = trainer.model
        batches = DataLoader(dataset, batch_size=trainer.args.per_device_eval_batch_size, collate_fn=trainer.data_collator)
    else:
        model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
        batches = trainer.get_eval_dataloader(dataset)
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(names), dtype=torch.float64)
    count = 0
    for batch in batches:
        batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
        with trainer.autocast_smart_context_manager():
            outputs = model(**batch)
        values = torch.stack([outputs[n].detach().float().reshape(()) for n in names])
        weight = torch.tensor(float(batch["input_ids"].shape[0]), device=values.device)
        row = torch.cat([values * weight, weight[None]])[None]
        gathered = (row if local else trainer.accelerator.gather(row)).reshape(-1, len(names) + 1)
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
    headless_args: HeadlessStartArguments | None = None,
) -> dict:
    """Train ``model_class`` on the corpus of ``data_args``; returns the metrics written to ``metrics.json``.

    ``make_collators(tokenizer, eval_dataset, seed)`` returns the collator (its ``mask_example``
    masks a training sequence when fetched, anew each epoch; its call pads a batch) and the
    evaluation set with its masks drawn once. ``configure_model`` adjusts the built model (RetroMAE:
    its sentence pooling). The saved encoder keeps the starting model's sentence-transformers
    settings (pooling, prompts; ``sentence_pooling`` overrides the pooling), so later stages embed
    it as it was pretrained. ``headless_args`` set the recipe for a checkpoint whose head is new
    (``finbert2.pretrain.headless``): prior bias, head warm-up, encoder learning rate, retrieval probe.
    """
    headless_args = headless_args or HeadlessStartArguments()
    output_dir = Path(training_args.output_dir)
    # Refuse a finished run before any work; everything else is validated before output_dir is touched.
    if is_finished_run(output_dir) and not run_args.overwrite_output_dir:
        raise OutputDirError(f"{output_dir}: holds a finished run ({METRICS_FILE}); pass --overwrite_output_dir "
                             "True to replace it, or choose another --output_dir")
    tokenizer = tokenizer_for(model_args)
    train_dataset, eval_dataset, data_summary = build_datasets(data_args, tokenizer, training_args.seed)
    if model_args.model_name_or_path is None and data_args.max_seq_length > model_args.tiny_max_position_embeddings:
        raise ConfigError(f"{stage}: max_seq_length exceeds tiny_max_position_embeddings")

    pooling = sentence_pooling or start_pooling(model_args.model_name_or_path)
    probe = retrieval_probe(headless_args, model_args.model_name_or_path, tokenizer, pooling)
    is_main = start_training_run(output_dir, training_args, run_args, model_args, data_args, headless_args,
                                 *extra_args, stage=stage, data_summary=data_summary)

    model = build_model(model_class, model_args, tokenizer, training_args.seed)
    if configure_model is not None:
        configure_model(model)
    collator, eval_masked = make_collators(tokenizer, eval_dataset, training_args.seed)
    train_masked = EpochMaskedDataset(train_dataset, collator.mask_example, training_args.seed)

    # The context-free bound (the corpus's unigram model on the held-out masked tokens) and, for a new head,
    # the decoder bias started at that prior; then the head warm-up and the encoder's own learning rate.
    log_prior = unigram_log_prior([e["input_ids"] for e in train_dataset.examples], model.config.vocab_size,
                                  structural_token_ids(tokenizer), headless_args.prior_smoothing)
    recipe: dict = {"unigram_cross_entropy": unigram_cross_entropy(
        log_prior, [e["labels"] for e in eval_masked.examples if "labels" in e])}
    recipe["prior_bias"] = uses_prior_bias(headless_args, model)
    if recipe["prior_bias"]:
        set_prior_bias(model, log_prior)
        logger.info("MLM decoder bias set to the corpus's log unigram prior (add-%g smoothing)",
                    headless_args.prior_smoothing)
    recipe["head_warmup_steps"] = resolve_head_warmup(headless_args, model, planned_steps(training_args,
                                                                                            len(train_dataset)))
    recipe["encoder_learning_rate"] = (training_args.learning_rate if headless_args.encoder_learning_rate is None
                                       else headless_args.encoder_learning_rate)
    logger.info("unigram cross-entropy of the held-out masked tokens: %s nats; head warm-up %d steps; "
                "learning rates: head %g, encoder %g", recipe["unigram_cross_entropy"], recipe["head_warmup_steps"],
                training_args.learning_rate, recipe["encoder_learning_rate"])
    warmup_callbacks = []
    if recipe["head_warmup_steps"]:
        warmup_callbacks.append(HeadWarmupCallback(model, recipe["head_warmup_steps"]))
        training_args.ddp_find_unused_parameters = True  # the frozen encoder has no gradient during the warm-up
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
        callbacks=[LossLogCallback(output_dir, extra_fields=[*loss_components, *RECIPE_LOG_FIELDS]),
                   NonFiniteGuardCallback(output_dir, skip=run_args.skip_nonfinite_steps), EpochCallback(train_masked),
                   session_tokens, *warmup_callbacks, *callbacks],
        loss_components=loss_components,
        head_warmup_steps=recipe["head_warmup_steps"],
        encoder_learning_rate=headless_args.encoder_learning_rate,
        retrieval_probe=probe,
    )

    checkpoint = resume_checkpoint(output_dir, training_args.resume_from_checkpoint)
    initial_path = output_dir / INITIAL_EVAL_FILE
    if checkpoint and initial_path.is_file():
        initial = json.loads(initial_path.read_text(encoding="utf-8"))
    else:
        initial = evaluate_losses(trainer, eval_masked, loss_components)
        if probe is not None:
            initial.update({f"eval_{k}": v for k, v in probe(model.bert, training_args.device, training_args.bf16).items()})
        if is_main:
            initial_path.write_text(json.dumps(initial, indent=2), encoding="utf-8")
    logger.info("held-out losses before training: %s", initial)

    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    session_seconds = time.perf_counter() - started
    final = evaluate_losses(trainer, eval_masked, loss_components)
    if probe is not None:
        # the kept model's retrieval score was logged when it was evaluated: encoding the validation folder again
        # would give the same numbers
        logged = logged_evaluation(trainer.state, training_args, key="eval_ndcg_at_10")
        final.update({k: v for k, v in logged.items() if k.startswith("eval_")} if logged else {
            f"eval_{k}": v for k, v in probe(trainer.model.bert, training_args.device, training_args.bf16).items()})
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
    metrics.update(recipe)
    mlm_loss = held_out_mlm_loss(final)
    if mlm_loss is not None and recipe["unigram_cross_entropy"] is not None:
        metrics["eval_mlm_loss_below_unigram"] = round(recipe["unigram_cross_entropy"] - mlm_loss, 6)
    damage = None
    if probe is not None:
        damage = retrieval_damage(initial.get("eval_ndcg_at_10"), final.get("eval_ndcg_at_10"),
                                  headless_args.retrieval_damage_tolerance)
        metrics["embedding_damaged"] = damage is not None
        if damage:
            logger.warning(damage)
            metrics["embedding_damage_reason"] = damage
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
        known = {alpha: {k.removeprefix("eval_"): v for k, v in scores.items()}
                 for alpha, scores in ((1.0, final), (0.0, initial)) if "eval_ndcg_at_10" in scores}
        if mlm_loss is not None and 1.0 in known:
            known[1.0]["mlm_loss"] = mlm_loss  # the saved model is the merge at alpha 1
        held_out_loss = None
        if len(eval_masked) and sharded_parameters(trainer):
            logger.warning("merge: parameters are sharded (FSDP / ZeRO-3): each merge's held-out MLM loss is not "
                           "measured and the unigram-bound rule does not apply")
        elif len(eval_masked):
            held_out_loss = merged_mlm_loss(trainer, eval_masked, loss_components)
        metrics.update(merged_with_start(headless_args, model_args.model_name_or_path, output_dir, known,
                                         held_out_loss, recipe["unigram_cross_entropy"]))
    training_args.distributed_state.wait_for_everyone()
    return metrics


MERGED_FOLDER = "merged_with_start"


def held_out_mlm_loss(losses: dict) -> float | None:
    """The MLM loss among ``evaluate_losses``' results: RetroMAE's encoder part, else the loss itself."""
    return losses.get("eval_encoder_mlm_loss", losses.get("eval_loss"))


def sharded_parameters(trainer: Trainer) -> bool:
    """FSDP or DeepSpeed ZeRO-3: no process holds the whole model, so a merge's held-out loss is not measured
    (the merge still chooses on retrieval and the probe)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_fsdp_enabled", False) or (plugin is not None and plugin.zero_stage == 3))


def merged_mlm_loss(trainer: Trainer, dataset: PretrainDataset, components: Sequence[str]):
    """The held-out MLM loss of a merge (RetroMAE: its encoder's): the merged tensors loaded into the run's model,
    scored on the run's pre-masked held-out blocks (the masks the unigram bound is measured on), the trained
    weights (copied once) put back after."""
    model = trainer.model
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def held_out_loss(tensors: dict) -> float:
        unknown = sorted(set(tensors) - set(trained))
        if unknown:
            raise ConfigError(f"merge: the merged checkpoint has weights the run's model lacks: {', '.join(unknown[:3])}")
        model.load_state_dict(tensors, strict=False)
        try:
            return held_out_mlm_loss(evaluate_losses(trainer, dataset, components, local=True))
        finally:
            model.load_state_dict({k: trained[k] for k in tensors}, strict=False)

    return held_out_loss


def merged_with_start(args: HeadlessStartArguments, start: str | None, output_dir: Path,
                      known_scores: dict[float, dict[str, float]] | None = None, held_out_loss=None,
                      unigram_bound: float | None = None) -> dict:
    """``--merge_with_start``: the saved encoder interpolated with its start into ``output_dir/merged_with_start``;
    the merge's scalar metrics, prefixed ``merge_`` (the curve stays in that folder's metrics.json).
    ``known_scores``: the run's validation retrieval scores of its saved model (alpha 1) and its start (alpha 0),
    which ``auto`` reuses where the merge at that alpha is that model. ``held_out_loss`` (``merged_mlm_loss``)
    measures each merge's held-out MLM loss; with ``merge_below_unigram``, auto keeps an alpha whose loss is below
    ``unigram_bound``."""
    from finbert2.merge.runner import merge_with_start, parse_alpha

    if parse_alpha(args.merge_with_start) is None:
        return {}
    if not start:
        raise ConfigError("pretrain: merge_with_start needs a starting model_name_or_path (a from-scratch run has none)")
    result = merge_with_start(output_dir, start, output_dir / MERGED_FOLDER, args.merge_with_start,
                              eval_retrieval_data=args.eval_retrieval_data,
                              eval_classification_data=args.merge_eval_classification_data,
                              eval_classification_train=args.merge_eval_classification_train,
                              eval_split=args.eval_retrieval_split, alpha_grid=args.merge_alpha_grid,
                              max_length=args.eval_retrieval_max_length, overwrite=True, known_scores=known_scores,
                              held_out_loss=held_out_loss,
                              loss_bound=unigram_bound if args.merge_below_unigram else None)
    logger.info("merged with the start: alpha %s -> %s", result.get("alpha"), output_dir / MERGED_FOLDER)
    return {f"merge_{k}": v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}


def structural_token_ids(tokenizer) -> list[int]:
    """Special tokens that are never a masked word ([CLS], [SEP], padding, [MASK]); the unknown token is one."""
    return [i for i in tokenizer.all_special_ids if i != tokenizer.unk_token_id]


def start_pooling(model_name_or_path: str | None) -> str:
    """The pooling the starting model was trained with (its sentence-transformers folder), else cls."""
    from finbert2.retrieve.encoder import saved_sentence_settings

    return saved_sentence_settings(model_name_or_path).get("pooling", "cls") if model_name_or_path else "cls"


def retrieval_probe(args: HeadlessStartArguments, model_name_or_path: str | None, tokenizer,
                    pooling: str) -> RetrievalProbe | None:
    """The zero-shot retrieval probe on ``eval_retrieval_data`` (read and checked before any work), or None."""
    if not args.eval_retrieval_data:
        return None
    from finbert2.data import read_retrieval_eval
    from finbert2.retrieve.encoder import resolve_prompts

    data = read_retrieval_eval(args.eval_retrieval_data, split=args.eval_retrieval_split)
    query_prompt, passage_prompt = resolve_prompts(model_name_or_path)
    return RetrievalProbe(data, tokenizer, pooling, query_prompt, passage_prompt, args.eval_retrieval_max_length)


def finish(output_dir: str | Path, metrics: dict, is_main: bool) -> dict:
    """Write ``metrics.json`` (the finished marker, last) on the main process."""
    if is_main:
        metrics = write_metrics(output_dir, metrics)
        logger.info("metrics: %s", json.dumps(metrics, ensure_ascii=False))
    return metrics
