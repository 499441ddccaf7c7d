"""Arguments of the tokenizer stage (SentencePiece training, domain-word selection, vocab extension)."""

from __future__ import annotations

from dataclasses import dataclass, field

from finbert2.errors import ConfigError


@dataclass
class TokenizerArguments:
    output_dir: str = field(metadata={"help": "Folder for the tokenizer (AutoTokenizer loads it), metrics and run record."})

    # ---- input text
    train_data: list[str] | None = field(
        default=None, metadata={"help": "Corpus files: .txt (one document a line), JSONL or CSV with text_field."}
    )
    text_field: str = field(default="text", metadata={"help": "Field/column holding the text in JSONL/CSV input."})
    validation_data: list[str] | None = field(
        default=None, metadata={"help": "Held-out text for tokens-per-char; default: a split of train_data."}
    )
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Percent of train_data documents held out when validation_data is not given."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for the held-out split and SentencePiece sampling."})

    # ---- where the vocab comes from
    base_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "BERT WordPiece vocab to extend: a vocab.txt, a tokenizer folder or a hub id "
            "(bert-base-chinese). Empty: build a small vocab from scratch on train_data."
        },
    )
    spm_model: str | None = field(
        default=None,
        metadata={"help": "An existing SentencePiece .model (e.g. upstream unigram_all.model) used as the word source "
                  "instead of training one."},
    )

    # ---- SentencePiece training (defaults: the upstream unigram_all.model trainer spec)
    vocab_size: int = field(default=50000, metadata={"help": "SentencePiece vocab size (upstream: 50,000)."})
    model_type: str = field(default="unigram", metadata={"help": "SentencePiece model type (upstream: unigram)."})
    normalization_rule_name: str = field(default="nmt_nfkc", metadata={"help": "Upstream: nmt_nfkc."})
    character_coverage: float = field(default=0.9995, metadata={"help": "SentencePiece default, suited to CJK."})
    input_sentence_size: int = field(
        default=0, metadata={"help": "Sample this many lines for SentencePiece training (0: all)."}
    )
    max_sentence_length: int = field(
        default=16384, metadata={"help": "Longest line in bytes SentencePiece keeps (its default 4192 drops long reports)."}
    )
    max_sentencepiece_length: int = field(default=16, metadata={"help": "Longest piece in characters."})
    hard_vocab_limit: bool = field(
        default=True, metadata={"help": "False lets SentencePiece stop below vocab_size on a small corpus."}
    )
    num_threads: int = field(default=2, metadata={"help": "SentencePiece training threads."})

    # ---- domain-word selection
    min_word_frequency: int = field(
        default=50, metadata={"help": "Keep pieces occurring at least this often in the corpus under the SP model."}
    )
    min_word_length: int = field(default=2, metadata={"help": "Shortest domain word in characters."})
    max_word_length: int = field(default=8, metadata={"help": "Longest domain word in characters."})
    max_added_words: int | None = field(
        default=None, metadata={"help": "Add at most this many words, most frequent first (default: no cap)."}
    )
    jieba_filter: bool = field(
        default=False,
        metadata={"help": "Keep only pieces jieba also segments as one word (drops cross-word pieces like 的公司)."},
    )
    user_dict: str | None = field(default=None, metadata={"help": "jieba user dictionary for jieba_filter."})

    # ---- from-scratch vocab (no base_tokenizer)
    scratch_vocab_size: int = field(
        default=8000, metadata={"help": "WordPiece size (chars + pieces) built from train_data when no base is given."}
    )
    scratch_min_frequency: int = field(default=2, metadata={"help": "Minimum count of a scratch WordPiece entry."})
    do_lower_case: bool = field(default=True, metadata={"help": "Lowercase Latin text, as bert-base-chinese does."})
    model_max_length: int = field(default=512, metadata={"help": "Recorded in the tokenizer config."})

    def __post_init__(self):
        if not self.train_data and not self.spm_model:
            raise ConfigError("tokenizer: give train_data (to train SentencePiece) or spm_model (an existing one)")
        if self.base_tokenizer is None and not self.train_data:
            raise ConfigError("tokenizer: building a vocab from scratch (no base_tokenizer) needs train_data")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError("tokenizer: validation_split_percentage must be in [0, 100)")
        if self.min_word_length < 2 or self.max_word_length < self.min_word_length:
            raise ConfigError("tokenizer: need 2 <= min_word_length <= max_word_length")
        if self.vocab_size < 10:
            raise ConfigError("tokenizer: vocab_size must be at least 10")
