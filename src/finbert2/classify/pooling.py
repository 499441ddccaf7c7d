"""The sentence vector a classifier reads, and a head that starts from a linear probe.

An encoder trained with mean pooling (e5, most sentence-transformers models) has near-identical
``[CLS]``/``<s>`` states across texts (e5-small on CFBenchmark: mean cosine 0.925 at ``<s>`` vs 0.869
mean-pooled): a new tanh pooler on ``<s>`` starts from a poor feature. ``--pooling mean`` classifies the
masked mean of the last layer instead, as the encoder was trained to summarise a text; ``--pooling cls``
is the architecture's own head (BERT: its pooler over [CLS]). ``--head_init probe`` starts the classifier
from a logistic regression fitted on the frozen features of the training split (linear probing, then
fine-tuning: the LP-FT recipe), so fine-tuning starts from a head that already separates the classes.

A mean-pooled classifier is saved as a ``BertForSequenceClassification`` folder with ``pooling: mean`` in
its ``finbert2`` config entry; ``SequenceClassifier.from_pretrained`` (predict, the server, the report)
rebuilds the mean-pooled model from it. ``AutoModelForSequenceClassification`` alone would read it with
BERT's [CLS] pooler, which it never trained with.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from finbert2.data.writers import atomic_write_bytes
from finbert2.errors import ConfigError

logger = logging.getLogger("finbert2.classify")

POOLINGS = ("cls", "mean")
HEAD_INITS = ("random", "probe")


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss ``BertForSequenceClassification`` uses for ``config.problem_type``."""
    if config.problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if config.problem_type == "regression" or config.num_labels == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    return nn.functional.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))


class BertForMeanPooledSequenceClassification(BertForSequenceClassification):
    """BERT's sequence classifier reading the masked mean of the last layer (no pooler).

    Same parameter names as ``BertForSequenceClassification`` minus ``bert.pooler``, so the folder it
    saves is a standard one; the ``pooling: mean`` config entry says how to read it.
    """

    def __init__(self, config):
        super().__init__(config)
        self.bert.pooler = None  # unused: the mean of the last layer is the sentence vector

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_hidden_states=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, output_hidden_states=output_hidden_states)
        pooled = masked_mean(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = classification_loss(self.config, logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def default_pooling(model_name_or_path: str | None) -> str:
    """mean for a model folder saved with mean pooling (e5 as converted, our retrievers), else cls."""
    from finbert2.retrieve.encoder import saved_sentence_settings

    if not model_name_or_path:
        return "cls"
    return "mean" if saved_sentence_settings(model_name_or_path).get("pooling") == "mean" else "cls"


def classifier_class(pooling: str, auto_class):
    """The model class that reads ``pooling``: the Auto class's own head for cls, ours for mean."""
    if pooling not in POOLINGS:
        raise ConfigError(f"classify: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return auto_class if pooling == "cls" else BertForMeanPooledSequenceClassification


def check_mean_pooling_supported(model_name_or_path: str | None, model_type: str) -> None:
    if model_type != "bert":
        raise ConfigError(f"{model_name_or_path}: --pooling mean is implemented for BERT-architecture encoders "
                          f"(e5, BGE, FinBERT2); this one is {model_type}: use --pooling cls")


@torch.no_grad()
def classifier_inputs(model, input_ids: list[list[int]], pad_id: int, batch_size: int = 32) -> np.ndarray:
    """The features the classification layer (``model.classifier``, a Linear) receives for each input, in eval
    mode: the mean-pooled or pooler vector, whichever the model reads."""
    from finbert2.retrieve.encoder import pad_batch

    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"--head_init probe needs a linear classification layer ('classifier'); "
                          f"{type(model).__name__} has {type(head).__name__}")
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        features = np.zeros((len(input_ids), head.in_features), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = pad_batch([input_ids[i] for i in rows], pad_id)
            captured.clear()
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            features[rows] = captured[0].numpy()
    finally:
        hook.remove()
        model.train(was_training)
    return features


FEATURE_CACHE_VERSION = 1  # part of every key: bump when classifier_inputs changes what it returns


def encoder_digest(model) -> str:
    """A content hash of everything but the classification layer (the frozen features' source), with the model
    class (which vector the head reads): two runs from the same folder share it whatever their seed."""
    from finbert2.modeling import weights_digest

    return weights_digest(model, exclude=("classifier.",), salt=f"{type(model).__name__}|v{FEATURE_CACHE_VERSION}")


def cached_classifier_inputs(model, input_ids: list[list[int]], pad_id: int, batch_size: int,
                             cache: Path | None, model_key: str = "") -> np.ndarray:
    """``classifier_inputs``, read from ``cache/<key>.npy`` when an earlier run computed them for the same encoder
    weights (``model_key``, from ``encoder_digest``) and the same token ids; computed and stored otherwise.
    ``cache`` None computes without storing."""
    if cache is None:
        return classifier_inputs(model, input_ids, pad_id, batch_size)
    digest = hashlib.sha256(f"{model_key}|{pad_id}|{len(input_ids)}".encode())
    for ids in input_ids:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    path = cache / f"{digest.hexdigest()}.npy"
    if path.is_file():
        features = np.load(path)
        if features.shape == (len(input_ids), model.classifier.in_features):
            return features
    features = classifier_inputs(model, input_ids, pad_id, batch_size)
    buffer = io.BytesIO()
    np.save(buffer, features)
    atomic_write_bytes(path, buffer.getvalue())  # a reader sees a whole file or none
    return features


def fit_probe(features: np.ndarray, targets: np.ndarray, num_labels: int, multi_label: bool, c: float,
              seed: int):
    """A logistic regression on frozen features: multinomial for single-label, one-vs-rest for multi-label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    if multi_label:
        probe = OneVsRestClassifier(LogisticRegression(C=c, max_iter=3000, random_state=seed))
        probe.fit(features, targets)
        return probe
    probe = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    probe.fit(features, targets)
    if len(probe.classes_) != num_labels:
        raise ConfigError(f"--head_init probe: the training split has {len(probe.classes_)} of the {num_labels} "
                          "classes; every class needs training examples")
    return probe


def probe_logits(probe, features: np.ndarray, num_labels: int, multi_label: bool) -> np.ndarray:
    """Logits the classifier layer gives once it holds the probe (``set_head_from_probe``)."""
    weight, bias = probe_weights(probe, num_labels, multi_label)
    return features @ weight.T + bias


def probe_weights(probe, num_labels: int, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (num_labels, d), bias (num_labels,))`` of a softmax/sigmoid layer equal to the probe."""
    if multi_label:
        weight = np.vstack([e.coef_ for e in probe.estimators_])
        bias = np.concatenate([e.intercept_ for e in probe.estimators_])
    elif num_labels == 2:  # sklearn keeps one direction for two classes: split it into two softmax logits
        weight = np.vstack([-probe.coef_[0] / 2, probe.coef_[0] / 2])
        bias = np.array([-probe.intercept_[0] / 2, probe.intercept_[0] / 2])
    else:
        weight, bias = probe.coef_, probe.intercept_
    return weight.astype(np.float32), bias.astype(np.float32)


def set_head_from_probe(model, probe, num_labels: int, multi_label: bool) -> None:
    weight, bias = probe_weights(probe, num_labels, multi_label)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
