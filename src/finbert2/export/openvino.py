"""ONNX -> OpenVINO IR (``openvino.convert_model``) and static int8 with NNCF's post-training quantization.

Static int8 fixes the activation scales from calibration texts (NNCF's transformer preset keeps the
accuracy-sensitive ops, softmax and layer norms, in float; we also keep the attention products in float),
which is why it runs faster than dynamic int8, whose scales are computed at every batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FP32_FILE = "openvino_model.xml"
STATIC_INT8_FILE = "openvino_model_qint8_quantized.xml"  # sentence-transformers' name for NNCF static int8
CALIBRATION_MAX_TEXTS = 300  # NNCF's default subset size


def convert(onnx_file: Path, target: Path):
    """The OpenVINO model of ``onnx_file``, saved as ``target`` (.xml + .bin, weights kept fp32)."""
    import openvino

    model = openvino.convert_model(str(onnx_file))
    target.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, str(target), compress_to_fp16=False)
    return model


def _is_weight(output) -> bool:
    """A Constant, or a Constant behind a Convert (weights stored compressed)."""
    node = output.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def activation_matmuls(model) -> list[str]:
    """Names of the MatMuls whose two inputs are both activations (attention scores and context)."""
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and not any(_is_weight(op.input_value(i)) for i in range(2))]


def quantize_static_int8(model, calibration_rows: list[tuple[list[int], list[int] | None]], target: Path) -> Path:
    """NNCF post-training int8 of ``model`` calibrated on tokenized items (``(token ids, segment ids or None)``
    each: a text, or a reranker's pair with its segments)."""
    import nncf
    import openvino

    def feeds(item: tuple[list[int], list[int] | None]) -> dict[str, np.ndarray]:
        ids = np.asarray([item[0]], dtype=np.int64)
        types = np.zeros_like(ids) if item[1] is None else np.asarray([item[1]], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}

    rows = calibration_rows[:CALIBRATION_MAX_TEXTS]
    # The attention products (scores = Q K^T, context = softmax V) stay in float: quantizing them took the
    # min cosine to fp32 from 0.996 to 0.988 on e5-small (64 CFBenchmark passages), and optimum-intel's own
    # export never quantizes them either (its graph keeps one fused attention op).
    ignored = activation_matmuls(model)
    quantized = nncf.quantize(model, nncf.Dataset(rows, feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(rows),
                              ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
    openvino.save_model(quantized, str(target), compress_to_fp16=False)
    return target
