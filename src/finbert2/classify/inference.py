"""Batched inference of a fine-tuned classifier: length-sorted batches, long-text pooling, probabilities.

The same code scores the validation and test splits at the end of training and serves
``finbert2 classify predict``, so a prediction file reproduces the labels evaluation scored.

    clf = SequenceClassifier.from_pretrained("runs/classify")
    result = clf.predict(["公司业绩大幅增长", ...])
    result.labels()  # ["积极", ...]
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from finbert2.classify.data import pool_by_owner
from finbert2.classify.longtext import LongTextSettings, encode_texts
from finbert2.errors import ConfigError
from finbert2.modeling import load_tokenizer
from finbert2.retrieve.encoder import batch_token_bound, last_layer_at_cls_only, pad_batch, token_budget_batches

logger = logging.getLogger(__name__)

# Key in the model config holding what inference needs besides the label map.
CONFIG_KEY = "finbert2_classify"


@dataclass
class Predictions:
    label_names: list[str]
    multi_label: bool
    threshold: float
    logits: np.ndarray  # (n, k), window logits averaged per text
    cls: np.ndarray | None = None  # (n, hidden), the vector the head reads ([CLS] or mean) averaged per text
    stats: dict = field(default_factory=dict)

    @property
    def probabilities(self) -> np.ndarray:
        logits = torch.from_numpy(self.logits.astype(np.float32))
        return (torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)).numpy()

    def predicted(self) -> np.ndarray:
        """Label ids (single-label) or a 0/1 indicator matrix (multi-label)."""
        if self.multi_label:
            return (self.probabilities >= self.threshold).astype(np.int64)
        return self.logits.argmax(axis=-1)

    def labels(self) -> list:
        predicted = self.predicted()
        if self.multi_label:
            return [[self.label_names[j] for j in np.flatnonzero(row)] for row in predicted]
        return [self.label_names[i] for i in predicted]


def stored_settings(config) -> dict:
    return dict(getattr(config, CONFIG_KEY, None) or {})


def label_names_of(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


HEAD_MODULES = ("classifier", "score", "pooler")  # the heads of transformers' *ForSequenceClassification
# Classifiers whose head reads the last layer at [CLS] (position 0) alone: BERT's pooler, RoBERTa's
# classification head. Their last layer can run at [CLS] only (``last_layer_at_cls_only``).
CLS_HEAD_CLASSIFIERS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
                        "XLMRobertaForSequenceClassification")


def keep_head_fp32(model: torch.nn.Module) -> int:
    """Run the classification head (pooler, classifier/score) outside bf16 autocast, on float32 inputs.

    bf16 keeps ~3 significant digits; in the small head that rounding decides near-ties: on a fitted e5
    head it flipped 5 of 900 labels (fp32 logit margins under 0.006), 3 with the head in fp32. The head
    costs nothing next to the encoder. Returns the number of modules wrapped (idempotent).
    """
    wrapped = 0
    for name, module in model.named_modules():
        if name.rpartition(".")[2] not in HEAD_MODULES or getattr(module, "_finbert2_fp32", False):
            continue
        forward = module.forward

        def fp32_forward(*args, _forward=forward, **kwargs):
            with torch.autocast(device_type="cuda" if torch.cuda.is_available() else "cpu", enabled=False):
                args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
                return _forward(*args, **kwargs)

        module.forward = fp32_forward
        module._finbert2_fp32 = True
        wrapped += 1
    return wrapped


def load_classifier_model(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """A fine-tuned classifier folder as the model class that reads its saved pooling (mean: ours; cls: the
    architecture's own ``*ForSequenceClassification``)."""
    from finbert2.classify.pooling import classifier_class

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model_class = classifier_class(stored_settings(config).get("pooling", "cls"), AutoModelForSequenceClassification)
        return model_class.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{name_or_path}: cannot load a classifier ({str(err).splitlines()[0]})") from None


class SequenceClassifier:
    """A sequence classifier with the long-text strategy and threshold it was trained with."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 settings: LongTextSettings | None = None, threshold: float | None = None,
                 device: str | torch.device | None = None, bf16: bool = False):
        stored = stored_settings(model.config)
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or LongTextSettings(**stored.get("long_text", {}))
        self.multi_label = model.config.problem_type == "multi_label_classification"
        self.threshold = threshold if threshold is not None else float(stored.get("threshold", 0.5))
        self.pooling = stored.get("pooling", "cls")  # the sentence vector the head reads (and return_cls gives)
        self.label_names = label_names_of(model.config)
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device).eval()
        self.bf16 = bf16  # the setter keeps the head in fp32 under bf16
        max_positions = getattr(model.config, "max_position_embeddings", None)
        if max_positions and self.settings.max_length > max_positions:
            raise ConfigError(f"max_length {self.settings.max_length} exceeds the model's "
                              f"{max_positions} position embeddings")

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer_name: str | None = None, *, max_length: int | None = None,
                        truncation: str | None = None, threshold: float | None = None, device: str | None = None,
                        bf16: bool = False, trust_remote_code: bool = False) -> "SequenceClassifier":
        from finbert2.export.runtime import exported_backend, load_exported

        if exported_backend(name_or_path) != "torch":
            # An exported graph runs on the CPU at the precision it was exported and checked at.
            model, device, bf16 = load_exported(name_or_path), "cpu", False
        else:
            model = load_classifier_model(name_or_path, trust_remote_code)
        # This model is ours alone (one handed to __init__ may be in training): its head reads [CLS] only.
        if type(model).__name__ in CLS_HEAD_CLASSIFIERS:
            last_layer_at_cls_only(model.base_model)
        tokenizer = load_tokenizer(tokenizer_name or name_or_path, trust_remote_code=trust_remote_code)
        stored = dict(stored_settings(model.config).get("long_text", {}))
        if max_length is not None:
            stored["max_length"] = max_length
        if truncation is not None:
            stored["truncation"] = truncation
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model, tokenizer, LongTextSettings(**stored), threshold, device, bf16)

    @property
    def bf16(self) -> bool:
        return self._bf16

    @bf16.setter
    def bf16(self, value: bool) -> None:
        self._bf16 = bool(value)
        if self._bf16:
            keep_head_fp32(self.model)

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _forward(self, rows: list[list[int]], pad_id: int, return_cls: bool = False):
        ids, mask = pad_batch(rows, pad_id)
        with self._autocast():
            return self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                              output_hidden_states=return_cls)

    def sentence_vectors(self, last_hidden: torch.Tensor, rows: list[list[int]]) -> np.ndarray:
        """The vector the head reads from each window: [CLS], or the mean over its real tokens."""
        if self.pooling != "mean":
            return last_hidden[:, 0].float().cpu().numpy()
        from finbert2.classify.pooling import masked_mean

        mask = torch.zeros(last_hidden.shape[:2], dtype=torch.long, device=last_hidden.device)
        for i, ids in enumerate(rows):
            mask[i, :len(ids)] = 1
        return masked_mean(last_hidden.float(), mask).cpu().numpy()

    @torch.inference_mode()
    def window_logits(self, rows: list[list[int]]) -> np.ndarray:
        """Float32 logits of one batch of model inputs (``encode_texts`` windows): the server's batcher calls this."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return self._forward(rows, pad_id).logits.float().cpu().numpy()

    def predictions(self, logits: np.ndarray) -> Predictions:
        """Labels and probabilities of per-text logits, with this model's labels and threshold."""
        return Predictions(self.label_names, self.multi_label, self.threshold, logits)

    @torch.inference_mode()
    def predict(self, texts: list[str], batch_size: int = 64, return_cls: bool = False,
                progress: bool = False, max_batch_tokens: int | None = None) -> Predictions:
        """Labels, probabilities (and [CLS] vectors) of ``texts``. A forward pass holds at most ``batch_size``
        model inputs and ``max_batch_tokens`` padded tokens (``None``: ``CPU_BATCH_TOKENS`` on CPU, no token
        bound elsewhere; 0: no token bound)."""
        started = time.perf_counter()
        input_ids, owners, _ = encode_texts(self.tokenizer, texts, self.settings)
        max_batch_tokens = batch_token_bound(max_batch_tokens, self.device)
        # Longest first: batches hold similar lengths, so little padding; an out-of-memory shows at once.
        batches = token_budget_batches([len(ids) for ids in input_ids], max_batch_tokens, batch_size)
        num_labels = len(self.label_names)
        window_logits = np.zeros((len(input_ids), num_labels), dtype=np.float32)
        window_cls = np.zeros((len(input_ids), self.model.config.hidden_size), dtype=np.float32) if return_cls else None
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        forward_passes = len(batches)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="predict", unit="batch")
        for rows in batches:
            out = self._forward([input_ids[i] for i in rows], pad_id, return_cls)
            window_logits[rows] = out.logits.float().cpu().numpy()
            if return_cls:
                window_cls[rows] = self.sentence_vectors(out.hidden_states[-1], [input_ids[i] for i in rows])
        owners_arr = np.asarray(owners, dtype=np.int64)
        logits = pool_by_owner(window_logits, owners_arr, len(texts))
        cls_vectors = pool_by_owner(window_cls, owners_arr, len(texts)) if return_cls else None
        seconds = time.perf_counter() - started
        tokens = sum(len(x) for x in input_ids)
        stats = {"texts": len(texts), "model_inputs": len(input_ids), "tokens": tokens, "seconds": seconds,
                 "forward_passes": forward_passes, "max_batch_tokens": max_batch_tokens,
                 "texts_per_second": len(texts) / seconds if seconds else None,
                 "tokens_per_second": tokens / seconds if seconds else None}
        return Predictions(self.label_names, self.multi_label, self.threshold, logits, cls_vectors, stats)
