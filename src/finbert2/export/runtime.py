"""Run an exported model folder (``finbert2 export``) where a torch model ran.

An exported folder keeps sentence-transformers' backend layout: ``onnx/model*.onnx`` or
``openvino/openvino_model*.xml`` beside ``config.json``, the tokenizer and the sentence-transformers
modules, and no torch weights.
``ExportedModel`` answers the calls ``DenseEncoder``, ``SequenceClassifier`` and ``CrossEncoderScorer`` make
on a transformers model (``model(input_ids=..., attention_mask=..., token_type_ids=...)`` ->
``.last_hidden_state`` / ``.logits``), so every command that loads a model through them (retrieve evaluate |
index | mine | search, classify predict, rerank evaluate | predict, serve) takes the exported folder as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from finbert2.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
REPORT_FILE = "export_report.json"  # written by `finbert2 export`; names the model file that passed the check
MODEL_GLOBS = {"onnx": "onnx/*.onnx", "openvino": "openvino/*.xml"}  # sentence-transformers' backend layout


def exported_backend(name_or_path: str | Path) -> str:
    """``onnx`` / ``openvino`` for a folder holding that backend's model files and no torch weights, else ``torch``."""
    folder = Path(name_or_path)
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")):
        return "torch"
    return next((backend for backend, pattern in MODEL_GLOBS.items() if any(folder.glob(pattern))), "torch")


def export_report(folder: str | Path) -> dict:
    """The folder's ``export_report.json`` ({} where it has none)."""
    report = Path(folder) / REPORT_FILE
    if not report.is_file():
        return {}
    try:
        return json.loads(report.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(f"{report}: unreadable export report ({err})") from None


def exported_model_file(folder: str | Path, backend: str, report: dict | None = None) -> Path:
    """The model file of an exported folder: the one its export report (read here unless given) names, else its
    only one."""
    folder = Path(folder)
    name = (export_report(folder) if report is None else report).get("model_file")
    if name and (folder / name).is_file():
        return folder / name
    files = sorted(folder.glob(MODEL_GLOBS[backend]))
    if len(files) != 1:
        raise ConfigError(f"{folder}: expected one {MODEL_GLOBS[backend]} model file, found "
                          f"{', '.join(f.name for f in files) or 'none'}")
    return files[0]


class ExportedModel:
    """An exported graph behind the transformers call signature our inference code uses.

    Outputs come back as float32 CPU tensors under the names the graph was exported with
    (``last_hidden_state`` for an encoder, ``logits`` and ``cls_state`` for a classifier).
    """

    backend = ""
    inference_precision = "f32"

    def __init__(self, folder: str | Path):
        from transformers import AutoConfig

        self.folder = Path(folder)
        self.report = export_report(self.folder)  # read once: the model file and (OpenVINO) the precision
        self.file = exported_model_file(self.folder, self.backend, self.report)
        try:
            self.config = AutoConfig.from_pretrained(self.folder)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{self.folder}: no readable config.json beside the exported model ({err})") from None
        self.precision = "int8" if "qint8" in self.file.name else "fp32"
        try:
            self.input_names, self.output_names = self.load()
        except Exception as err:  # each runtime raises its own exception classes for a bad file
            raise ConfigError(f"{self.file}: cannot load the {self.backend} model ({str(err).splitlines()[0]})") from None

    def load(self) -> tuple[list[str], list[str]]:
        """Load ``self.file``; its input and output names."""
        raise NotImplementedError

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs, in ``output_names`` order."""
        raise NotImplementedError

    def weights_digest(self, salt: str = "") -> str:
        """A content hash of the graph's files (the model file and its same-named sidecars such as OpenVINO's
        ``.bin`` or ONNX external data): equal digests mean the same exported weights."""
        # the precision the runtime runs the graph at is part of what an encoding depends on
        digest = hashlib.sha256(f"{self.backend}|{self.inference_precision}|{salt}".encode())
        for path in sorted(p for p in self.folder.glob(f"{self.file.stem}.*") if p.is_file()):
            with open(path, "rb") as handle:
                digest.update(f"{path.name}|{hashlib.file_digest(handle, 'sha256').hexdigest()}|".encode())
        return digest.hexdigest()

    # The module-like calls DenseEncoder and SequenceClassifier make: an exported graph stays on the CPU.
    def to(self, *args, **kwargs) -> "ExportedModel":
        return self

    def eval(self) -> "ExportedModel":
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                 output_hidden_states: bool = False, **_) -> SimpleNamespace:
        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        if "token_type_ids" in self.input_names:  # a pair's segments (a BERT cross-encoder), else all zeros
            feeds["token_type_ids"] = (token_type_ids.cpu().numpy() if token_type_ids is not None
                                       else np.zeros_like(feeds["input_ids"]))
        outputs = dict(zip(self.output_names, self.run(feeds)))
        result = SimpleNamespace(**{name: torch.from_numpy(np.asarray(value, dtype=np.float32))
                                    for name, value in outputs.items()})
        if output_hidden_states:
            if "cls_state" not in outputs:
                raise ConfigError(f"{self.file}: the exported graph has no [CLS] output")
            # SequenceClassifier reads hidden_states[-1][:, 0]: the graph exports that [CLS] state alone.
            result.hidden_states = (result.cls_state[:, None, :],)
        return result


class OnnxModel(ExportedModel):
    backend = "onnx"

    def load(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(self.file), options, providers=["CPUExecutionProvider"])
        return [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]

    def run(self, feeds):
        return self.session.run(None, feeds)


class OpenVinoModel(ExportedModel):
    backend = "openvino"

    def load(self):
        import openvino

        # Without a hint OpenVINO runs an fp32 graph's float ops in bf16 on CPUs that have it: the export
        # records the precision its check ran at (f32 unless asked), and that is the one served.
        self.inference_precision = self.report.get("inference_precision", "f32")
        self.compiled = openvino.Core().compile_model(str(self.file), "CPU",
                                                      {"INFERENCE_PRECISION_HINT": self.inference_precision})
        self.request = self.compiled.create_infer_request()
        return ([i.get_any_name() for i in self.compiled.inputs],
                [o.get_any_name() for o in self.compiled.outputs])

    def run(self, feeds):
        results = self.request.infer(feeds)
        return [results[output] for output in self.compiled.outputs]


def load_exported(folder: str | Path) -> ExportedModel:
    """The runtime model of an exported folder (``onnx`` or ``openvino``, detected)."""
    backend = exported_backend(folder)
    if backend == "torch":
        raise ConfigError(f"{folder}: holds no exported model")
    return {"onnx": OnnxModel, "openvino": OpenVinoModel}[backend](folder)


def check_backend(name_or_path: str, backend: str | None) -> str:
    """The folder's backend, or a ConfigError when ``backend`` (a command's ``--backend``) names another."""
    found = exported_backend(name_or_path)
    if backend not in (None, "auto", found):
        raise ConfigError(f"{name_or_path}: holds a {found} model, not {backend} (--backend auto detects it)")
    return found
