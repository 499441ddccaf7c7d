"""Weight-space interpolation of two checkpoints of one architecture (model soups, WiSE-FT, LM-Cocktail).

``merged = alpha * A + (1 - alpha) * B``, tensor by tensor, computed in float32 and stored in the
inputs' dtype: alpha 1 gives A and alpha 0 gives B exactly. Checkpoints are read as safetensors
state dicts, not through a model class, so an encoder saved as ``BertModel`` (e5 as converted: keys
``embeddings...``) and one saved as ``BertForMaskedLM`` (a pretraining run: ``bert.embeddings...``
plus the ``cls.`` head) line up under one key layout. What one input alone has is carried over
unchanged and reported: a head (the MLM head a pretraining run added), a pooler, and the rows a grown
vocabulary appended to the embedding matrix (and the head's bias); the rows both have are merged.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from finbert2.errors import ConfigError

logger = logging.getLogger("finbert2.merge")

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

# Config keys that change what a tensor computes without changing its shape: they must agree. The
# shapes (hidden size, layers, vocabulary) are checked tensor by tensor.
ARCHITECTURE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                     "hidden_act", "layer_norm_eps", "position_embedding_type", "max_position_embeddings",
                     "type_vocab_size")


@dataclass
class Checkpoint:
    """One input: its folder, ``config.json`` and tensors keyed as in the model class with a head."""

    folder: Path
    label: str  # "A" or "B" in messages
    config: dict
    tensors: dict[str, torch.Tensor]
    prefix: str  # the base model's attribute name (BERT: "bert")
    has_head_layout: bool  # saved by a model class with a head (keys under ``prefix.``)

    @functools.cached_property
    def tokenizer(self):
        """The folder's tokenizer, or None when it has none (loaded once: a 250k-entry one takes seconds)."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.folder)
        except (OSError, ValueError):
            return None

    @property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size") or 0)

    def base_state_dict(self, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``tensors`` (default: this checkpoint's) under the base model's own key names (prefix stripped)."""
        start = f"{self.prefix}."
        return {k[len(start):]: v for k, v in (self.tensors if tensors is None else tensors).items()
                if k.startswith(start)}


def resolve_folder(name_or_path: str | Path) -> Path:
    """A local model folder, or a hub id downloaded to the hub cache (weights, config, tokenizer, ST files)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder
    if folder.exists() or str(name_or_path).count("/") != 1:
        raise ConfigError(f"{name_or_path}: not a model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                                         "*.model", "*/*.json"]))
    except Exception as err:  # offline, unknown id, gated: one line, whatever the hub client raised
        raise ConfigError(f"{name_or_path}: no such folder, and the hub gave no model "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise ConfigError(f"{index}: not a readable safetensors index") from None
        return [folder / shard for shard in shards]
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    raise ConfigError(f"{folder}: no {WEIGHTS_FILE} (merge reads safetensors checkpoints only)")


def base_model_prefix(config: dict, folder: Path) -> str:
    """The attribute under which a model with a head holds its base model (``bert`` for BERT)."""
    from transformers import MODEL_MAPPING, AutoConfig

    try:
        config_object = AutoConfig.for_model(config["model_type"])
        return MODEL_MAPPING[type(config_object)].base_model_prefix
    except (KeyError, ValueError):
        raise ConfigError(f"{folder}/config.json: model_type {config.get('model_type')!r} is not a transformers "
                          "architecture merge knows") from None


def read_config(name_or_path: str | Path, label: str) -> tuple[Path, dict]:
    """The model folder (a hub id downloaded) and its ``config.json``."""
    folder = resolve_folder(name_or_path)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"{config_path}: missing or not JSON (model {label} must be a transformers folder)") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"{config_path}: no model_type")
    return folder, config


def check_architectures(config_a: dict, folder_a: Path, config_b: dict, folder_b: Path) -> None:
    """Stop at the first architecture setting the configs disagree on (before any weights are read)."""
    for key in ARCHITECTURE_KEYS:
        if config_a.get(key) != config_b.get(key):
            raise ConfigError(f"cannot merge different architectures: {key} is {config_a.get(key)!r} in "
                              f"{folder_a} but {config_b.get(key)!r} in {folder_b}")


def read_checkpoint(folder: Path, config: dict, label: str) -> Checkpoint:
    prefix = base_model_prefix(config, folder)
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key)
        except (OSError, ValueError, RuntimeError) as err:  # a truncated or foreign file
            raise ConfigError(f"{path}: unreadable safetensors ({str(err).splitlines()[0]})") from None
    head_layout = any(k.startswith(f"{prefix}.") for k in tensors)
    if not head_layout:  # a bare base model: the same keys under the prefix a model with a head uses
        tensors = {f"{prefix}.{k}": v for k, v in tensors.items()}
    return Checkpoint(folder, label, config, tensors, prefix, head_layout)


def read_checkpoints(model_a: str | Path, model_b: str | Path) -> tuple[Checkpoint, Checkpoint]:
    """Both inputs, their architectures checked first (a mismatch fails before the weights are read)."""
    (folder_a, config_a), (folder_b, config_b) = read_config(model_a, "A"), read_config(model_b, "B")
    check_architectures(config_a, folder_a, config_b, folder_b)
    return read_checkpoint(folder_a, config_a, "A"), read_checkpoint(folder_b, config_b, "B")


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in tensor.shape) + ")"


def check_compatible(a: Checkpoint, b: Checkpoint) -> None:
    """Stop at the first difference that makes interpolation meaningless, naming it."""
    check_architectures(a.config, a.folder, b.config, b.folder)
    for key, tensor_a in a.tensors.items():
        tensor_b = b.tensors.get(key)
        if tensor_b is None or tensor_a.shape == tensor_b.shape:
            continue
        grown = (tensor_a.dim() == tensor_b.dim() and tensor_a.shape[1:] == tensor_b.shape[1:]
                 and {tensor_a.shape[0], tensor_b.shape[0]} == {a.vocab_size, b.vocab_size})
        if not grown:
            raise ConfigError(f"cannot merge different architectures: {key} has shape {_shape(tensor_a)} in "
                              f"{a.folder} but {_shape(tensor_b)} in {b.folder}")
        if tensor_a.is_floating_point() != tensor_b.is_floating_point():
            raise ConfigError(f"cannot merge {key}: {tensor_a.dtype} in {a.folder} but {tensor_b.dtype} in {b.folder}")


def check_same_vocabulary(a: Checkpoint, b: Checkpoint) -> None:
    """Rows are merged by id, so the shared ids must be the same tokens (a grown vocabulary appends)."""
    if a.tokenizer is None or b.tokenizer is None:  # the other one's is used: nothing to compare
        return
    by_id_a = {i: t for t, i in a.tokenizer.get_vocab().items()}
    by_id_b = {i: t for t, i in b.tokenizer.get_vocab().items()}
    for token_id in sorted(set(by_id_a) & set(by_id_b)):
        if by_id_a[token_id] != by_id_b[token_id]:
            raise ConfigError(f"cannot merge models with different vocabularies: token id {token_id} is "
                              f"{by_id_a[token_id]!r} in {a.folder} but {by_id_b[token_id]!r} in {b.folder}")


def merged_tokenizer(a: Checkpoint, b: Checkpoint):
    """The tokenizer the merge keeps: the larger vocabulary's (A's on a tie), else whichever input has one."""
    larger, smaller = (a, b) if a.vocab_size >= b.vocab_size else (b, a)
    tokenizer = larger.tokenizer or smaller.tokenizer
    if tokenizer is None:
        raise ConfigError(f"merge: neither {a.folder} nor {b.folder} holds a tokenizer")
    return tokenizer


@dataclass
class MergePlan:
    """Which tensors are interpolated, which are carried from one input, which rows are grown."""

    shared: list[str] = field(default_factory=list)
    carried: dict[str, str] = field(default_factory=dict)  # key -> "A" or "B"
    grown: dict[str, dict] = field(default_factory=dict)  # key -> {"from": "A"|"B", "rows": [first, end)}

    def report(self) -> dict:
        """The JSON-ready record of what was not interpolated."""
        return {"merged_tensors": len(self.shared), "carried_tensors": dict(self.carried),
                "grown_rows": {k: dict(v) for k, v in self.grown.items()}}


def plan_merge(a: Checkpoint, b: Checkpoint) -> MergePlan:
    check_compatible(a, b)
    plan = MergePlan()
    for key in [*a.tensors, *(k for k in b.tensors if k not in a.tensors)]:
        if key not in b.tensors or key not in a.tensors:
            plan.carried[key] = a.label if key in a.tensors else b.label
        else:
            plan.shared.append(key)
            rows_a, rows_b = a.tensors[key].shape[:1], b.tensors[key].shape[:1]
            if a.tensors[key].shape != b.tensors[key].shape:
                larger = a if rows_a > rows_b else b
                plan.grown[key] = {"from": larger.label, "rows": [min(rows_a[0], rows_b[0]), max(rows_a[0], rows_b[0])]}
    return plan


def interpolate(tensor_a: torch.Tensor, tensor_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * a + (1 - alpha) * b`` in float32, in the wider of the two dtypes; exact at 0 and 1."""
    dtype = torch.promote_types(tensor_a.dtype, tensor_b.dtype)
    if alpha == 1.0:
        return tensor_a.to(dtype, copy=True)
    if alpha == 0.0:
        return tensor_b.to(dtype, copy=True)
    return (alpha * tensor_a.float() + (1.0 - alpha) * tensor_b.float()).to(dtype)


def merge_tensors(a: Checkpoint, b: Checkpoint, plan: MergePlan, alpha: float,
                  keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The merged state dict (``keys`` only, when given) in the key layout with the head."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"merge: alpha must be in [0, 1], got {alpha}")
    inputs = {a.label: a, b.label: b}
    merged: dict[str, torch.Tensor] = {}
    for key in keys if keys is not None else [*plan.shared, *plan.carried]:
        if key in plan.carried:
            merged[key] = inputs[plan.carried[key]].tensors[key].clone()
            continue
        tensor_a, tensor_b = a.tensors[key], b.tensors[key]
        if not tensor_a.is_floating_point():  # ids, counters: nothing to average
            if not torch.equal(tensor_a, tensor_b):
                raise ConfigError(f"cannot merge {key}: integer tensors differ between {a.folder} and {b.folder}")
            merged[key] = tensor_a.clone()
            continue
        if key in plan.grown:
            shared_rows = plan.grown[key]["rows"][0]
            out = inputs[plan.grown[key]["from"]].tensors[key].to(torch.promote_types(tensor_a.dtype, tensor_b.dtype),
                                                                  copy=True)
            out[:shared_rows] = interpolate(tensor_a[:shared_rows], tensor_b[:shared_rows], alpha)
            merged[key] = out
        else:
            merged[key] = interpolate(tensor_a, tensor_b, alpha)
    return merged
