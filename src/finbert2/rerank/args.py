"""Arguments of ``finbert2 rerank train|predict`` (``rerank evaluate`` takes ``retrieve evaluate``'s)."""

from __future__ import annotations

from dataclasses import dataclass, field

from finbert2.errors import ConfigError
from finbert2.precision import PrecisionTrainingArguments

DTYPES = ("auto", "fp32", "bf16", "int8")


@dataclass
class RerankerDataArguments:
    train_data: list[str] | None = field(
        default=None, metadata={"help": "Training JSONL files {query, pos: [str], neg: [str]} (the retriever's "
                                "format; mine neg with `retrieve mine`, BM25, dense or hybrid)."})
    eval_data: str | None = field(
        default=None, metadata={"help": "Validation folder (corpus.jsonl, <split>_queries.jsonl, <split>_qrels.jsonl): "
                                "BM25's top eval_top_k reranked every eval_steps, the best checkpoint kept."})
    eval_split: str = field(default="test", metadata={"help": "Query/qrels file prefix in eval_data."})
    eval_top_k: int = field(default=20, metadata={"help": "BM25 candidates reranked per validation query."})
    train_group_size: int = field(
        default=8, metadata={"help": "Pairs per query in the listwise loss: 1 positive + (group size - 1) hard "
                             "negatives (bge-reranker: 16)."})
    max_len: int = field(default=256, metadata={"help": "Longest query + passage pair in tokens (bge-reranker: 512)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})

    def __post_init__(self):
        if not self.train_data:
            raise ConfigError("rerank train: give train_data (JSONL with query, pos, neg)")
        if self.train_group_size < 2:
            raise ConfigError("rerank train: train_group_size must be at least 2 (a positive and a negative)")
        if self.eval_top_k < 1:
            raise ConfigError("rerank train: eval_top_k must be at least 1")


@dataclass
class RerankerTrainingArguments(PrecisionTrainingArguments):
    """``TrainingArguments`` plus early stopping on the validation folder."""

    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after this many evaluations without a better validation score (0: never)."})
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the modules the checkpoint lacks (the new pooler and one-logit "
                                "head of an encoder checkpoint); default: learning_rate. At an encoder's rate "
                                "(2e-5..5e-5) a new head barely moves in a small run: every pair keeps one score "
                                "and the loss sits at ln(group size)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the raw groups for the collator."})

    def __post_init__(self):
        if self.early_stopping_patience < 0:
            raise ConfigError("rerank train: early_stopping_patience must be >= 0")
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise ConfigError("rerank train: head_learning_rate must be > 0")
        super().__post_init__()


@dataclass
class PredictArguments:
    model_name_or_path: str = field(metadata={"help": "Reranker folder or hub id."})
    input_file: str = field(metadata={"help": "JSONL {query, texts: [str]}: passages to order for each query."})
    output_file: str = field(metadata={"help": "JSONL {query, ranking: [{index, score, text}]}, best first."})
    dtype: str = field(default="fp32", metadata={"help": "fp32, bf16 (autocast), int8 (dynamic quantisation) or auto."})
    max_length: int | None = field(default=None, metadata={"help": "Longest pair in tokens (default: the model's, <= 512)."})
    raw_scores: bool = field(default=False, metadata={"help": "Logits instead of sigmoid scores."})
    overwrite_output_file: bool = field(default=False, metadata={"help": "Replace an existing output_file."})

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"rerank predict: dtype must be one of {', '.join(DTYPES)}")
