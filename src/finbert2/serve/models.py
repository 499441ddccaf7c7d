"""The models a server holds: the retriever (``DenseEncoder``) and labelers (``SequenceClassifier``),
loaded from the folders this toolkit writes, at the precision asked for, with tokenization that
reports which inputs were too long."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from finbert2.classify.inference import SequenceClassifier
from finbert2.classify.longtext import encode_texts
from finbert2.errors import ConfigError
from finbert2.export.runtime import ExportedModel
from finbert2.precision import native_bf16, resolve_bf16
from finbert2.retrieve.encoder import DenseEncoder

logger = logging.getLogger("finbert2.serve")


def quantize_linear_layers(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantisation of every ``nn.Linear`` (weights int8, activations quantised per batch)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch points new code to torchao; the eager API still does this job
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def apply_dtype(model: torch.nn.Module, dtype: str) -> tuple[torch.nn.Module, bool]:
    """``(model, bf16 autocast?)`` for ``fp32``, ``bf16`` or ``int8``; an exported graph keeps the precision
    it was exported and checked at."""
    if isinstance(model, ExportedModel):
        if dtype == "int8":
            raise ConfigError(f"{model.folder}: an exported model is not quantized at load time; export it with "
                              "`finbert2 export ... --quantize int8-dynamic` (behind its --check)")
        return model, False
    if dtype == "bf16" and not native_bf16()[0]:
        logger.warning("--dtype bf16 on a CPU without AVX512-BF16/AMX: emulated, likely slower than fp32")
    if dtype == "int8":
        return quantize_linear_layers(model), False
    return model, dtype == "bf16"


def served_precision(model, dtype: str) -> tuple[str, str]:
    """``(backend, dtype)`` a model runs at, as ``/info`` reports them."""
    if isinstance(model, ExportedModel):
        return model.backend, model.precision
    return "torch", dtype


def model_name(path: str) -> str:
    return Path(path.rstrip("/")).name or path


@dataclass
class Tokenized:
    rows: list[list[int]]  # model inputs (special tokens included)
    owners: list[int]  # input index of each row (classifier windows)
    too_long: list[int]  # input indices longer than the model's max length
    tokens: int  # tokens of every row
    lengths: list[int]  # tokens of each input before any cut (a classifier's: without [CLS]/[SEP])


def truncated_header(tokenized: Tokenized) -> dict[str, str]:
    """How many inputs were cut to fit (TEI has no field for it; a header keeps its body shape)."""
    return {"X-Truncated-Inputs": str(len(tokenized.too_long))}


class Embedder:
    """The retriever: prompts, tokenization with a max length, pooled vectors of a batch."""

    def __init__(self, path: str, dtype: str = "fp32", max_length: int | None = None, name: str | None = None):
        self.path, self.name, self.dtype = path, name or model_name(path), dtype
        self.encoder = DenseEncoder.from_pretrained(path, device="cpu")
        positions = getattr(self.encoder.model.config, "max_position_embeddings", 512)
        self.max_length = min(max_length or 512, positions)
        self.encoder.max_length = self.max_length
        self.encoder.model, self.encoder.bf16 = apply_dtype(self.encoder.model, dtype)
        self.backend, self.dtype = served_precision(self.encoder.model, dtype)

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    @property
    def prompts(self) -> dict[str, str]:
        """TEI's prompt names: ``query`` and ``passage`` (sentence-transformers calls the latter ``document``)."""
        return {"query": self.encoder.query_instruction, "passage": self.encoder.passage_instruction,
                "document": self.encoder.passage_instruction}

    def tokenize(self, texts: list[str], truncate: bool) -> Tokenized:
        tokenizer = self.encoder.tokenizer
        rows = tokenizer(texts, truncation=False, return_attention_mask=False,
                         return_token_type_ids=False, verbose=False)["input_ids"]
        lengths = [len(ids) for ids in rows]
        too_long = [i for i, n in enumerate(lengths) if n > self.max_length]
        if too_long and truncate:  # exactly what DenseEncoder.encode feeds the model for these texts
            cut = tokenizer([texts[i] for i in too_long], truncation=True, max_length=self.max_length,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            for i, ids in zip(too_long, cut):
                rows[i] = ids
        return Tokenized(rows, list(range(len(rows))), too_long, sum(map(len, rows)), lengths)

    def token_spans(self, texts: list[str], add_special_tokens: bool) -> list[list[dict]]:
        """TEI's /tokenize: each token's id, the characters it covers, and whether it is special."""
        tokenizer = self.encoder.tokenizer
        encoded = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                            return_special_tokens_mask=True, return_attention_mask=False,
                            return_token_type_ids=False, verbose=False)
        answers = []
        for text, ids, offsets, special in zip(texts, encoded["input_ids"], encoded["offset_mapping"],
                                               encoded["special_tokens_mask"]):
            answers.append([
                {"id": i, "text": tokenizer.convert_ids_to_tokens(i), "special": True, "start": None, "stop": None}
                if is_special else {"id": i, "text": text[start:stop], "special": False, "start": start, "stop": stop}
                for i, (start, stop), is_special in zip(ids, offsets, special)])
        return answers

    def special_tokens_around(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after one text's tokens (BERT: [CLS] / [SEP]), read
        off a probe text: transformers 5 tokenizers no longer add them to a given id list."""
        tokenizer = self.encoder.tokenizer
        bare = tokenizer("金融", add_special_tokens=False)["input_ids"]
        full = tokenizer("金融")["input_ids"]
        start = next(i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare)
        return full[:start], full[start + len(bare):]

    def token_rows(self, id_lists: list[list[int]], truncate: bool) -> Tokenized:
        """Model inputs of token arrays that are already ids of this tokenizer (no special tokens)."""
        prefix, suffix = self.special_tokens_around()
        budget = self.max_length - len(prefix) - len(suffix)
        too_long = [i for i, ids in enumerate(id_lists) if len(ids) > budget]
        rows = [prefix + list(ids[:budget] if truncate else ids) + suffix for ids in id_lists]
        return Tokenized(rows, list(range(len(rows))), too_long, sum(map(len, rows)), [len(ids) for ids in id_lists])

    def forward(self, rows: list[list[int]]) -> np.ndarray:
        return self.encoder.pooled(rows).numpy()

    def token_states(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Every token's last hidden state (special tokens included), one array per row: TEI's /embed_all."""
        encoder = self.encoder
        input_ids, attention_mask = encoder._pad(rows)
        with torch.inference_mode(), encoder._autocast():
            states = encoder.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = states.float().cpu().numpy()
        return [states[i, :len(row)] for i, row in enumerate(rows)]

    def warm_up(self) -> None:
        self.forward(self.tokenize(["预热"], truncate=True).rows)


class Labeler:
    """A classifier with its saved long-text strategy and multi-label threshold."""

    def __init__(self, path: str, dtype: str = "fp32", name: str | None = None):
        self.path, self.name, self.dtype = path, name or model_name(path), dtype
        self.classifier = SequenceClassifier.from_pretrained(path, device="cpu")
        self.classifier.model, self.classifier.bf16 = apply_dtype(self.classifier.model, dtype)
        self.backend, self.dtype = served_precision(self.classifier.model, dtype)

    @property
    def max_length(self) -> int:
        return self.classifier.settings.max_length

    @property
    def tokenizer(self):
        return self.classifier.tokenizer

    def tokenize(self, texts: list[str], truncate: bool) -> Tokenized:
        rows, owners, lengths = encode_texts(self.classifier.tokenizer, texts, self.classifier.settings)
        too_long = [i for i, n in enumerate(lengths) if n > self.classifier.settings.budget]
        return Tokenized(rows, owners, too_long, sum(map(len, rows)), lengths)

    def forward(self, rows: list[list[int]]) -> np.ndarray:
        return self.classifier.window_logits(rows)

    def warm_up(self) -> None:
        self.forward(self.tokenize(["预热"], truncate=True).rows)


def load_models(retriever: str | None, classifiers: list[str], dtype: str, max_length: int | None,
                served_name: str | None = None) -> tuple[Embedder | None, dict[str, Labeler]]:
    if dtype == "auto":
        precision = resolve_bf16("auto")
        logger.info(precision.message)
        dtype = "bf16" if precision.bf16 else "fp32"
    embedder = Embedder(retriever, dtype, max_length, served_name) if retriever else None
    labelers: dict[str, Labeler] = {}
    for path in classifiers:
        labeler = Labeler(path, dtype)
        if labeler.name in labelers or (embedder and labeler.name == embedder.name):
            raise ConfigError(f"two models are named '{labeler.name}': give each classifier folder its own name")
        labelers[labeler.name] = labeler
    return embedder, labelers
