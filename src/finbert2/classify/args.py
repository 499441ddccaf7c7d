"""Arguments of the Fin-Labeler stage: data and task, long-text handling, baseline, inference."""

from __future__ import annotations

from dataclasses import dataclass, field

from finbert2.errors import ConfigError
from finbert2.precision import bf16_field

TRUNCATION_STRATEGIES = ("head", "head_tail", "chunk")


@dataclass
class LongTextArguments:
    """How a text longer than ``max_length`` tokens is fed to the encoder (stored with the model)."""

    max_length: int = field(
        default=512, metadata={"help": "Tokens per model input, [CLS] and [SEP] included (upstream: 510 + 2)."}
    )
    truncation: str = field(
        default="head_tail",
        metadata={
            "help": "head: keep the first tokens. head_tail: keep the first head_fraction and the last tokens "
            "(default; news and reports put the verdict at both ends). chunk: split into windows and average "
            "their logits (reads everything; costs one forward pass per window).",
            "choices": list(TRUNCATION_STRATEGIES),
        },
    )
    head_fraction: float = field(
        default=0.25, metadata={"help": "head_tail: share of the token budget taken from the start (128 of 510)."}
    )
    chunk_overlap: int = field(default=64, metadata={"help": "chunk: tokens shared by consecutive windows."})
    max_chunks: int = field(
        default=8, metadata={"help": "chunk: windows per text at most (the rest of a very long text is dropped)."}
    )

    def check_long_text(self):
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise ConfigError(f"classify: truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}")
        if self.max_length < 8:
            raise ConfigError("classify: max_length must be at least 8")
        if not 0.0 < self.head_fraction < 1.0:
            raise ConfigError("classify: head_fraction must be in (0, 1)")
        if self.truncation == "chunk" and not 0 <= self.chunk_overlap < self.max_length - 2:
            raise ConfigError("classify: chunk_overlap must be in [0, max_length - 2)")
        if self.max_chunks < 1:
            raise ConfigError("classify: max_chunks must be at least 1")

    def long_text_settings(self) -> dict:
        return {
            "max_length": self.max_length,
            "truncation": self.truncation,
            "head_fraction": self.head_fraction,
            "chunk_overlap": self.chunk_overlap,
            "max_chunks": self.max_chunks,
        }


@dataclass
class DataArguments(LongTextArguments):
    """Splits, fields and task type, shared by ``train`` and ``baseline``."""

    train_data: list[str] | None = field(
        default=None, metadata={"help": "Training files: JSONL {text, label} or CSV text,label."}
    )
    eval_data: list[str] | None = field(
        default=None,
        metadata={"help": "Validation files: checkpoint choice, early stopping and threshold tuning use only these. "
                  "Empty: a stratified validation_split_percentage of train_data."},
    )
    test_data: list[str] | None = field(
        default=None, metadata={"help": "Test files, evaluated once at the end (never used for any choice)."}
    )
    text_field: str = field(default="text", metadata={"help": "Field/column holding the text."})
    label_field: str = field(default="label", metadata={"help": "Field/column holding the label (or label list)."})
    label_list: list[str] | None = field(
        default=None,
        metadata={"help": "The label set in id order; a label outside it is an error. Default: the sorted labels "
                  "seen in train_data."},
    )
    multi_label: bool | None = field(
        default=None,
        metadata={"help": "Multi-label task (sigmoid per label). Default: inferred from the data (label lists)."},
    )
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Percent of train_data held out (stratified) when eval_data is not given."}
    )
    class_weighting: bool = field(
        default=False,
        metadata={"help": "Weight the loss by inverse class frequency (balanced), for imbalanced labels."},
    )
    threshold: float = field(
        default=0.5, metadata={"help": "Multi-label: probability above which a label is predicted."}
    )
    tune_threshold: bool = field(
        default=True, metadata={"help": "Multi-label: pick the threshold maximising validation macro-F1."}
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Stop after this many evaluations without validation improvement (0: off)."}
    )
    pooling: str | None = field(
        default=None,
        metadata={"help": "The sentence vector the head reads: cls (the architecture's head; BERT: its pooler over "
                  "[CLS]) or mean (masked mean of the last layer, BERT encoders). Default: mean for a model folder "
                  "saved with mean pooling (e5, our retrievers), else cls. Saved with the model."},
    )
    head_init: str = field(
        default="random",
        metadata={"help": "random (from the seed) or probe: the head starts as a logistic regression fitted on the "
                  "frozen features of the training split (linear probing, then fine-tuning)."},
    )
    probe_c: float = field(default=1.0, metadata={"help": "Inverse L2 strength of the probe's logistic regression."})
    probe_feature_cache: bool = field(
        default=True,
        metadata={"help": "--head_init probe: keep the frozen features in the user cache (classifier_features/), keyed "
                  "by the encoder's weights and the token ids, so other seeds and reruns skip the forward pass."},
    )
    keep_start_if_better: bool = field(
        default=True,
        metadata={"help": "With load_best_model_at_end: the starting model (encoder + the probe's or the seed's head) "
                  "is a candidate too, kept when no evaluated checkpoint beats its validation metric (fine-tuning "
                  "that lands below its linear probe is not shipped as an improvement)."},
    )

    def __post_init__(self):
        self.check_long_text()
        if not self.train_data:
            raise ConfigError("classify: give train_data")
        if not 0 < self.validation_split_percentage < 100:
            raise ConfigError("classify: validation_split_percentage must be in (0, 100)")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("classify: threshold must be in (0, 1)")
        if self.label_list is not None and len(set(self.label_list)) != len(self.label_list):
            raise ConfigError("classify: label_list has duplicates")
        if self.pooling is not None and self.pooling not in {"cls", "mean"}:
            raise ConfigError(f"classify: pooling must be cls or mean, got {self.pooling!r}")
        if self.head_init not in {"random", "probe"}:
            raise ConfigError(f"classify: head_init must be random or probe, got {self.head_init!r}")
        if self.probe_c <= 0:
            raise ConfigError("classify: probe_c must be > 0")


@dataclass
class BaselineArguments:
    """The TF-IDF + logistic-regression baseline (``finbert2 classify baseline``).

    It reads the same config as ``train`` (output_dir and seed are the TrainingArguments' ones;
    the model and optimiser arguments are accepted and unused), so both run on identical splits.
    """

    word_ngram_max: int = field(default=2, metadata={"help": "Longest jieba word n-gram."})
    char_ngram_min: int = field(default=1, metadata={"help": "Shortest character n-gram."})
    char_ngram_max: int = field(default=3, metadata={"help": "Longest character n-gram."})
    min_df: int = field(default=2, metadata={"help": "Drop terms seen in fewer training documents."})
    max_features: int | None = field(default=200000, metadata={"help": "Vocabulary cap per vectoriser."})
    c_values: list[float] = field(
        default_factory=lambda: [0.1, 1.0, 10.0, 100.0],
        metadata={"help": "Inverse regularisation strengths tried; the best on validation macro-F1 is kept."},
    )

    def __post_init__(self):
        if not self.c_values or any(c <= 0 for c in self.c_values):
            raise ConfigError("classify baseline: c_values must be positive numbers")
        if self.char_ngram_min < 1 or self.char_ngram_max < self.char_ngram_min or self.word_ngram_max < 1:
            raise ConfigError("classify baseline: bad n-gram range")


@dataclass
class PredictArguments:
    """Batch inference (``finbert2 classify predict``, ``Fin-labeler/sequence_inference.py``)."""

    model_name_or_path: str = field(metadata={"help": "A fine-tuned classifier folder or hub id."})
    input_file: str = field(metadata={"help": "JSONL or CSV with a text field/column."})
    output_file: str = field(metadata={"help": "Predictions: .jsonl (one object per input row) or .csv."})
    text_field: str = field(default="text", metadata={"help": "Field/column holding the text."})
    label_field: str | None = field(
        default=None,
        metadata={"help": "Field/column with gold labels: when given, they are checked against the model's "
                  "label set and accuracy/F1 are printed."},
    )
    batch_size: int = field(default=64, metadata={"help": "Model inputs per forward pass (length-sorted)."})
    max_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "Padded tokens per forward pass, as well as batch_size. Default: 2048 on CPU (a CPU "
                  "forward slows per token as its activations outgrow the caches), no bound on a GPU; 0: no bound."},
    )
    max_length: int | None = field(default=None, metadata={"help": "Default: the value the model was trained with."})
    truncation: str | None = field(
        default=None,
        metadata={"help": "head | head_tail | chunk. Default: the model's training setting."},
    )
    threshold: float | None = field(
        default=None, metadata={"help": "Multi-label threshold. Default: the tuned one stored with the model."}
    )
    return_cls: bool = field(default=False, metadata={"help": "Also write the [CLS] vector of every text."})
    keep_fields: bool = field(default=True, metadata={"help": "Copy the input row's fields into the output row."})
    bf16: str = bf16_field()
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... Default: cuda if present."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, when not the model's own."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the folder/hub."})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError("classify predict: batch_size must be at least 1")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 0:
            raise ConfigError("classify predict: max_batch_tokens must be 0 (no bound) or more")
        if self.truncation is not None and self.truncation not in TRUNCATION_STRATEGIES:
            raise ConfigError(f"classify predict: truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError("classify predict: threshold must be in (0, 1)")
