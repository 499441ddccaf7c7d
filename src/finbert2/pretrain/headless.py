"""Continued pretraining from an encoder that shipped without an MLM head (e5, BGE, GTE, ...).

A new head (transform + vocabulary projection tied to the word embeddings) starts from the seed. Trained
with the encoder from step 1 at the encoder's learning rate, its noise is what the encoder learns from:
the held-out loss starts *above* a uniform guess, the encoder's gradient under two random heads is
nearly orthogonal, and the loss falls to the corpus's unigram cross-entropy (token frequencies) while
the embedding space a retriever relies on is wrecked. The recipe here:

1. the decoder bias starts at the training corpus's smoothed log unigram prior, so the head predicts
   token frequencies from step 0 (the unigram cross-entropy of the held-out masked tokens is reported
   beside every loss: the context-free bound a pretrained encoder must beat);
2. ``head_warmup_steps`` train the new head alone (encoder and embeddings frozen, bit-identical);
3. the encoder then trains at its own, lower ``encoder_learning_rate``, its warm-up counted from the
   unfreezing (``per_group_schedule``);
4. ``RetrievalProbe`` scores zero-shot nDCG@10 on a retrieval validation folder at every evaluation,
   and ``retrieval_damage`` names a run that moved it more than ``tolerance`` below its start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback, get_scheduler

from finbert2.errors import ConfigError
from finbert2.pretrain.whole_word_masking import IGNORE_INDEX

logger = logging.getLogger("finbert2.pretrain")

ENCODER_PREFIX = "bert."  # every other parameter (cls.*, retromae_decoder.*) belongs to a pretraining head
RETRIEVAL_DAMAGE_TOLERANCE = 0.02  # nDCG@10 drop below the start that the damage guard reports
AUTO_HEAD_WARMUP_SHARE = 0.1  # head_warmup_steps when left unset on a checkpoint without a trained head


@dataclass
class HeadlessStartArguments:
    """How a pretraining stage continues a checkpoint whose pretraining head is new."""

    head_warmup_steps: float | None = field(
        default=None,
        metadata={"help": "Train only the new head (encoder and word embeddings frozen) for this many steps first "
                  "(below 1: that share of the steps). Default: a tenth of the steps when the checkpoint lacks a head "
                  "the stage trains (an MLM head: e5, BGE, GTE; RetroMAE's decoder), else 0."},
    )
    encoder_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of the encoder (learning_rate is the head's). Default: learning_rate. "
                  "Its warm-up (warmup_steps) counts from the end of the head warm-up."},
    )
    prior_bias: str = field(
        default="auto",
        metadata={"help": "Start the MLM decoder bias at the training corpus's smoothed log unigram prior: auto "
                  "(when the checkpoint has no trained MLM head), true, or false."},
    )
    prior_smoothing: float = field(
        default=0.5, metadata={"help": "Add-k smoothing of the unigram counts behind the prior bias."},
    )
    eval_retrieval_data: str | None = field(
        default=None,
        metadata={"help": "A retrieval folder (corpus.jsonl, <split>_queries.jsonl, <split>_qrels.jsonl): zero-shot "
                  "nDCG@10 of the encoder at every evaluation (eval_ndcg_at_10, usable as metric_for_best_model) "
                  "and the damage guard."},
    )
    eval_retrieval_split: str = field(
        default="test",
        metadata={"help": "The <split>_queries/<split>_qrels files of eval_retrieval_data to score. Give a validation "
                  "folder (the converters' validation/, whose files are named test_*), never the test split."},
    )
    eval_retrieval_max_length: int = field(
        default=256, metadata={"help": "Tokens per text when scoring eval_retrieval_data."},
    )
    retrieval_damage_tolerance: float = field(
        default=RETRIEVAL_DAMAGE_TOLERANCE,
        metadata={"help": "Warn when zero-shot nDCG@10 falls more than this below the starting encoder's."},
    )
    merge_with_start: str = field(
        default="none",
        metadata={"help": "After training, interpolate the encoder with the model it started from (LM-Cocktail "
                  "style) into <output_dir>/merged_with_start: auto (alpha chosen on eval_retrieval_data, and "
                  "merge_eval_classification_data when given), a number in [0, 1] (1 = the trained model), or none."},
    )
    merge_eval_classification_data: str | None = field(
        default=None,
        metadata={"help": "With merge_with_start auto: labelled texts ({text, label}) for a frozen-vector probe "
                  "that joins nDCG@10 in choosing alpha."},
    )
    merge_eval_classification_train: str | None = field(
        default=None,
        metadata={"help": "With merge_eval_classification_data: labelled texts the probe is fitted on (else it "
                  "cross-validates on merge_eval_classification_data)."},
    )
    merge_alpha_grid: list[float] | None = field(
        default=None,
        metadata={"help": "With merge_with_start auto: the alphas scored (default 0.0 0.1 ... 1.0; 0 and 1 always "
                  "added). Each costs one encoding of eval_retrieval_data: a coarser grid saves time on a CPU."},
    )
    merge_below_unigram: bool = field(
        default=True,
        metadata={"help": "With merge_with_start auto: choose alpha only among merges whose held-out MLM loss "
                  "(RetroMAE: its encoder's) stays below the corpus's unigram cross-entropy, so the merge keeps "
                  "what the run learned beyond word frequencies; when none does, the best of all, with a warning. "
                  "The merged loss is measured and reported at every alpha either way."},
    )

    def __post_init__(self):
        if self.prior_bias not in {"auto", "true", "false"}:
            raise ConfigError("pretrain: prior_bias must be auto, true or false")
        if self.head_warmup_steps is not None and (self.head_warmup_steps < 0 or (
                self.head_warmup_steps >= 1 and self.head_warmup_steps != int(self.head_warmup_steps))):
            raise ConfigError("pretrain: head_warmup_steps must be a whole number of steps or a share in [0, 1)")
        if self.encoder_learning_rate is not None and self.encoder_learning_rate < 0:
            raise ConfigError("pretrain: encoder_learning_rate must be >= 0")
        if self.prior_smoothing <= 0:
            raise ConfigError("pretrain: prior_smoothing must be > 0")
        from finbert2.merge.runner import parse_alpha

        if parse_alpha(self.merge_with_start) == "auto" and not self.eval_retrieval_data:
            raise ConfigError("pretrain: merge_with_start auto chooses alpha on eval_retrieval_data; give it")
        if self.merge_eval_classification_train and not self.merge_eval_classification_data:
            raise ConfigError("pretrain: merge_eval_classification_train needs merge_eval_classification_data")


def is_head_parameter(name: str) -> bool:
    return not name.startswith(ENCODER_PREFIX)


def new_head_modules(model) -> list[str]:
    """The pretraining-head modules the checkpoint did not have ([] for a from-scratch model: all of it is new,
    and a random encoder has nothing to protect)."""
    return [name for name in getattr(model, "new_module_names", None) or [] if is_head_parameter(name + ".")]


def has_untrained_mlm_head(model) -> bool:
    return any(name.startswith("cls.predictions") for name in new_head_modules(model))


def unigram_log_prior(sequences: Sequence[Sequence[int]], vocab_size: int, excluded_ids: Sequence[int] = (),
                      smoothing: float = 0.5) -> torch.Tensor:
    """log p(token) from add-``smoothing`` counts over ``sequences``. Occurrences of ``excluded_ids`` ([CLS],
    [SEP], padding: never an MLM target) are not counted, so those tokens keep only the smoothing mass; every
    entry stays finite (an unknown token can be masked like any word)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for ids in sequences:
        counts += torch.bincount(torch.as_tensor(ids, dtype=torch.long), minlength=vocab_size)[:vocab_size].double()
    excluded = torch.as_tensor(sorted({i for i in excluded_ids if i is not None and 0 <= i < vocab_size}),
                               dtype=torch.long)
    counts[excluded] = 0.0
    counts += smoothing
    return (counts.log() - counts.sum().log()).float()


def unigram_cross_entropy(log_prior: torch.Tensor, label_sequences: Sequence[Sequence[int]]) -> float | None:
    """Mean -log p(label) at the labelled (masked) positions: the loss of a model that ignores context."""
    total, count = 0.0, 0
    for labels in label_sequences:
        labels = torch.as_tensor(labels, dtype=torch.long)
        labels = labels[labels != IGNORE_INDEX]
        total += float(-log_prior[labels].double().sum())
        count += labels.numel()
    return total / count if count else None


def set_prior_bias(model, log_prior: torch.Tensor) -> None:
    """Start the MLM decoder bias (``cls.predictions.bias``, tied to the decoder's) at ``log_prior``."""
    bias = model.cls.predictions.bias
    if bias.shape[0] != log_prior.shape[0]:
        raise ConfigError(f"prior bias: the head has {bias.shape[0]} outputs, the prior {log_prior.shape[0]} tokens")
    with torch.no_grad():
        bias.copy_(log_prior.to(bias.dtype))


def planned_steps(training_args, train_examples: int) -> int:
    """The optimizer steps a run will take (``max_steps``, else epochs over the training set)."""
    if training_args.max_steps and training_args.max_steps > 0:
        return int(training_args.max_steps)
    per_step = (training_args.per_device_train_batch_size * max(training_args.world_size, 1)
                * training_args.gradient_accumulation_steps)
    return max(1, math.ceil(math.ceil(train_examples / per_step) * training_args.num_train_epochs))


def resolve_head_warmup(args: HeadlessStartArguments, model, total_steps: int) -> int:
    """Head-only steps: as given (a share below 1 of ``total_steps``), else automatic for an untrained MLM head."""
    if args.head_warmup_steps is None:
        # any head the checkpoint lacks (an MLM head, RetroMAE's decoder) starts random: protect the encoder from it
        share = AUTO_HEAD_WARMUP_SHARE if new_head_modules(model) else 0.0
    elif args.head_warmup_steps < 1:
        share = args.head_warmup_steps
    else:
        steps = int(args.head_warmup_steps)
        if steps >= total_steps > 0:
            raise ConfigError(f"pretrain: head_warmup_steps ({steps}) leaves no step for the encoder "
                              f"({total_steps} steps planned)")
        return steps
    return max(1, round(share * total_steps)) if share > 0 else 0


def uses_prior_bias(args: HeadlessStartArguments, model) -> bool:
    return args.prior_bias == "true" or (args.prior_bias == "auto" and has_untrained_mlm_head(model))


def schedule_multiplier(training_args, num_training_steps: int) -> Callable[[int], float]:
    """The Trainer's learning-rate multiplier (its scheduler type, warm-up and kwargs) over ``num_training_steps``."""
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(training_args.lr_scheduler_type, optimizer=probe,
                              num_warmup_steps=training_args.get_warmup_steps(num_training_steps),
                              num_training_steps=num_training_steps,
                              scheduler_specific_kwargs=training_args.lr_scheduler_kwargs)
    if not isinstance(scheduler, LambdaLR):
        raise ConfigError(f"pretrain: lr_scheduler_type {training_args.lr_scheduler_type} cannot be combined with "
                          "head_warmup_steps/encoder_learning_rate (needs a LambdaLR schedule)")
    return scheduler.lr_lambdas[0]


def per_group_schedule(optimizer, training_args, num_training_steps: int, head_warmup_steps: int) -> LambdaLR:
    """The head follows the usual schedule from step 0; the encoder is at 0 during the head warm-up, then
    follows the same schedule (warm-up included) over the remaining steps."""
    head = schedule_multiplier(training_args, num_training_steps)
    encoder_after = schedule_multiplier(training_args, max(num_training_steps - head_warmup_steps, 1))

    def encoder(step: int) -> float:
        return 0.0 if step < head_warmup_steps else encoder_after(step - head_warmup_steps)

    return LambdaLR(optimizer, [head if group.get("part") == "head" else encoder for group in optimizer.param_groups])


class HeadWarmupCallback(TrainerCallback):
    """Freeze the encoder (every non-head parameter that trains) until ``steps`` optimizer steps are done.

    Frozen parameters get no gradient, so AdamW leaves them (and their moments) untouched: the encoder is
    bit-identical after the warm-up, and the warm-up steps cost a forward pass and the head's backward only.
    A run resumed inside the warm-up freezes again; one resumed after it does not.
    """

    def __init__(self, model, steps: int):
        self.steps = steps
        self.encoder_parameters = [p for n, p in model.named_parameters()
                                   if not is_head_parameter(n) and p.requires_grad]
        self.frozen = False

    def _set(self, frozen: bool) -> None:
        for parameter in self.encoder_parameters:
            parameter.requires_grad_(not frozen)
        self.frozen = frozen

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step < self.steps:
            logger.info("head warm-up: encoder frozen for steps %d-%d", state.global_step + 1, self.steps)
            self._set(True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.frozen and state.global_step >= self.steps:
            logger.info("head warm-up done at step %d: the encoder trains from now on", state.global_step)
            self._set(False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.frozen:
            self._set(False)


class RetrievalProbe:
    """Zero-shot retrieval metrics of the encoder being pretrained, on a validation folder."""

    def __init__(self, data, tokenizer, pooling: str, query_prompt: str, passage_prompt: str,
                 max_length: int = 256, k: int = 100):
        self.data = data
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.query_prompt = query_prompt
        self.passage_prompt = passage_prompt
        self.max_length = max_length
        self.k = k

    def __call__(self, encoder_model, device, bf16: bool = False) -> dict[str, float]:
        from finbert2.retrieve.encoder import DenseEncoder
        from finbert2.retrieve.evaluate import dense_evaluation

        was_training = encoder_model.training
        encoder = DenseEncoder(encoder_model, self.tokenizer, pooling=self.pooling, normalize=True,
                               query_instruction=self.query_prompt, passage_instruction=self.passage_prompt,
                               max_length=self.max_length, device=str(device), bf16=bf16)
        try:
            mean, _, _ = dense_evaluation(encoder, self.data, self.k)
        finally:
            encoder_model.train(was_training)
        return mean


def retrieval_damage(start: float | None, now: float | None, tolerance: float) -> str | None:
    """A reason when zero-shot nDCG@10 fell more than ``tolerance`` below the starting encoder's."""
    if start is None or now is None or now >= start - tolerance:
        return None
    return (f"pretraining is damaging the embedding space: zero-shot nDCG@10 {now:.4f} vs {start:.4f} at the start "
            f"(-{start - now:.4f}, tolerance {tolerance}); lower encoder_learning_rate, lengthen head_warmup_steps, "
            "or keep the best checkpoint by eval_ndcg_at_10")
