"""Arguments of the pretraining stages (MLM and RetroMAE), besides ``ModelArguments`` and ``TrainingArguments``."""

from __future__ import annotations

from dataclasses import dataclass, field

from finbert2.errors import ConfigError


@dataclass
class PretrainDataArguments:
    """Where the corpus comes from and how it becomes masked training examples."""

    train_data: list[str] | None = field(
        default=None, metadata={"help": "Corpus files: JSONL {\"text\": ...}, .txt (one document a line) or CSV."}
    )
    text_field: str = field(default="text", metadata={"help": "Field/column holding the text in JSONL/CSV input."})
    eval_data: list[str] | None = field(
        default=None, metadata={"help": "Held-out corpus files; default: a split of train_data."}
    )
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Percent of train_data documents held out when eval_data is not given."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first this many held-out sequences (default: all); "
                                        "the rest is not tokenized."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the corpus's first this many sequences (default: all; the rest "
                                        "is not tokenized); for quick runs."}
    )
    max_seq_length: int = field(
        default=512, metadata={"help": "Tokens per sequence, [CLS] and [SEP] included (upstream: 512)."}
    )
    line_by_line: bool = field(
        default=False,
        metadata={"help": "One sequence per document (truncated, padded per batch). Off: documents are "
                  "concatenated and cut into max_seq_length blocks (packed, no padding)."},
    )
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Share of words (jieba segmentation) masked in each sequence (BERT: 0.15)."}
    )
    mask_replace_prob: float = field(
        default=0.8, metadata={"help": "Of the chosen words, the share replaced by [MASK] (BERT: 0.8)."}
    )
    random_replace_prob: float = field(
        default=0.1,
        metadata={"help": "Of the chosen words, the share replaced by random tokens (BERT: 0.1); the rest stay."},
    )
    jieba_user_dict: str | None = field(
        default=None, metadata={"help": "jieba user dictionary (one word a line, optional frequency and tag)."}
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad batches to a multiple of this (8 suits GPU tensor cores)."}
    )

    def __post_init__(self):
        if not self.train_data:
            raise ConfigError("pretrain: give train_data (a corpus file or several)")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError("pretrain: validation_split_percentage must be in [0, 100)")
        if self.max_seq_length < 8:
            raise ConfigError("pretrain: max_seq_length must be at least 8")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("pretrain: mlm_probability must be in (0, 1)")
        if self.mask_replace_prob < 0 or self.random_replace_prob < 0 \
                or self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError("pretrain: need mask_replace_prob, random_replace_prob >= 0 with a sum <= 1")


@dataclass
class RetroMAEArguments:
    """The RetroMAE-specific settings (the encoder's masking share is mlm_probability, 0.3 in the configs)."""

    decoder_mask_ratio: float = field(
        default=0.5,
        metadata={"help": "Share of tokens each decoder position cannot see (the position itself is always "
                  "hidden, the sentence embedding at position 0 always shown)."},
    )

    sentence_pooling: str | None = field(
        default=None,
        metadata={"help": "The sentence embedding the decoder reconstructs from: cls (RetroMAE, FinBERT2) or mean. "
                  "Default: the starting model's saved pooling (e5: mean), else cls. Saved with the encoder, so "
                  "the retriever stage uses the same."},
    )

    def __post_init__(self):
        if self.sentence_pooling not in {None, "cls", "mean"}:
            raise ConfigError("retromae: sentence_pooling must be cls or mean")
        if not 0 <= self.decoder_mask_ratio < 1:
            raise ConfigError("retromae: decoder_mask_ratio must be in [0, 1)")
