"""Torch -> ONNX (``torch.onnx.export``) and int8 dynamic quantization (``onnxruntime.quantization``).

The graph takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` with dynamic batch and length
(the inputs optimum's feature-extraction export has, so sentence-transformers' ``backend="onnx"``
reads it) and returns ``last_hidden_state`` (encoders) or ``logits`` and ``cls_state``
(classifiers: the last layer's [CLS] state that ``predict --return_cls`` writes).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

OPSET = 18
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EncoderGraph(torch.nn.Module):
    """A base model's ``last_hidden_state``."""

    output_names = ("last_hidden_state",)

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


class ClassifierGraph(torch.nn.Module):
    """A sequence classifier's logits and its last layer's [CLS] state."""

    output_names = ("logits", "cls_state")

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         output_hidden_states=True)
        return out.logits, out.hidden_states[-1][:, 0]


def export_onnx(graph: torch.nn.Module, path: Path, vocab_size: int) -> Path:
    """Trace ``graph`` (an ``EncoderGraph``/``ClassifierGraph``) into ``path`` with dynamic batch and length.

    The TorchScript exporter (``dynamo=False``) traces a BERT in seconds; the dynamo exporter took 6x
    longer on the same model for an equal graph. Traced on a padded batch of two, so the masking path
    that padding takes is the one recorded."""
    graph = graph.eval()  # the exporter restores the wrapper's mode afterwards: eval keeps dropout off
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, max(vocab_size, 6), (2, 16), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    axes = {name: {0: "batch", 1: "length"} for name in INPUTS}
    axes.update({name: {0: "batch", 1: "length"} if name == "last_hidden_state" else {0: "batch"}
                 for name in graph.output_names})
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape-dependent Python branches of transformers
        torch.onnx.export(graph, (input_ids, attention_mask, torch.zeros_like(input_ids)), str(path),
                          input_names=list(INPUTS), output_names=list(graph.output_names), dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    return path


def quantize_dynamic_int8(source: Path, target: Path) -> Path:
    """int8 weights (per output channel, symmetric) and activations quantized per batch at run time:
    sentence-transformers' ``export_dynamic_quantized_onnx_model`` settings, without optimum."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return target
