"""Loading and creating encoders and tokenizers the same way in every stage.

A stage names a model by ``model_name_or_path`` (a folder or a hub id) and optionally a separate
``tokenizer_name``. With no model, it starts from a small randomly initialised BERT over the
tokenizer (the offline demo path). Weights load from safetensors with remote code off.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, BertConfig, PreTrainedModel, PreTrainedTokenizerBase

from finbert2.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which encoder and tokenizer a stage starts from (names as in the transformers examples)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A model folder or hub id (e.g. valuesimplex-ai-lab/FinBERT2-base). "
                  "Empty: a randomly initialised BERT over tokenizer_name, sized by the tiny_* arguments."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or hub id, when not the model's own."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are cached."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code from the model folder/hub to run (off: never)."}
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={"help": "Load pickle-based weights (pytorch_model.bin) when no safetensors exist. Pickle can run "
                  "code on load: only for files you trust."},
    )
    # Size of the from-scratch BERT (used only without model_name_or_path).
    tiny_hidden_size: int = field(default=256, metadata={"help": "Hidden size of a from-scratch BERT."})
    tiny_num_hidden_layers: int = field(default=4, metadata={"help": "Layers of a from-scratch BERT."})
    tiny_num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of a from-scratch BERT."})
    tiny_intermediate_size: int = field(default=1024, metadata={"help": "Feed-forward size of a from-scratch BERT."})
    tiny_max_position_embeddings: int = field(default=512, metadata={"help": "Longest input of a from-scratch BERT."})
    # Training-speed options; their speed and accuracy costs are measured in benchmarks/mlm_throughput.
    hidden_dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout on embeddings, attention and feed-forward outputs (BERT's hidden_dropout_prob). "
                  "Default: the model's own (BERT, e5: 0.1). Saved in the trained model's config.json."},
    )
    attention_dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout on attention probabilities (attention_probs_dropout_prob). Default: the model's "
                  "own (0.1). 0 skips drawing a mask over every attention score, a large share of a CPU training "
                  "step. Saved in the trained model's config.json."},
    )
    freeze_word_embeddings: bool = field(
        default=False,
        metadata={"help": "Keep the token embedding matrix (and the MLM decoder tied to it) fixed: no gradient and "
                  "no optimizer state for its vocab x hidden rows. Rows added for new words keep their "
                  "mean-of-pieces start."},
    )

    def __post_init__(self):
        if self.model_name_or_path is None and self.tokenizer_name is None:
            raise ConfigError("give model_name_or_path, or tokenizer_name to start a BERT from scratch")
        for name in DROPOUT_CONFIG_KEYS:
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")

    def config_overrides(self) -> dict[str, float]:
        """The config attributes the dropout options set (none when left at the model's own)."""
        return {key: getattr(self, name) for name, key in DROPOUT_CONFIG_KEYS.items() if getattr(self, name) is not None}


# ModelArguments option -> the BERT config attribute it sets
DROPOUT_CONFIG_KEYS = {"hidden_dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob"}


def weights_digest(model, exclude: tuple[str, ...] = (), salt: str = "") -> str:
    """A content hash of a model's state dict (names, dtypes, shapes, bytes), leaving out the keys that start with
    any of ``exclude``: equal digests mean equal weights, whatever folder they came from. An exported graph
    (``finbert2.export.runtime``) has no state dict and hashes its own files."""
    if not hasattr(model, "state_dict"):
        return model.weights_digest(salt=salt)
    import torch

    digest = hashlib.sha256(salt.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(exclude):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return digest.hexdigest()


def load_tokenizer(name_or_path: str, cache_dir: str | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer from a folder or hub id, with a one-line error when it cannot be found."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{name_or_path}: cannot load a tokenizer ({str(err).splitlines()[0]})") from None


def tokenizer_for(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    return load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                          model_args.cache_dir, model_args.trust_remote_code)


def scratch_bert_config(tokenizer: PreTrainedTokenizerBase, model_args: ModelArguments, **overrides) -> BertConfig:
    """The config of a from-scratch BERT over ``tokenizer``."""
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.tiny_hidden_size,
        num_hidden_layers=model_args.tiny_num_hidden_layers,
        num_attention_heads=model_args.tiny_num_attention_heads,
        intermediate_size=model_args.tiny_intermediate_size,
        max_position_embeddings=model_args.tiny_max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id or 0,
        **overrides,
    )


def load_model(auto_class, model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase,
               grow_embeddings: bool = False, **kwargs):
    """``auto_class.from_pretrained`` (safetensors only, remote code off unless asked), or from scratch.

    ``kwargs`` go to ``from_pretrained`` / the config (e.g. ``num_labels``, ``id2label``). When the
    tokenizer extends the model's vocab (the tokenizer stage's output over a base checkpoint),
    ``grow_embeddings`` resizes the embeddings, each new row the mean of its word's pieces under
    the checkpoint's own tokenizer; otherwise that mismatch is an error.
    """
    overrides = model_args.config_overrides()
    if model_args.model_name_or_path is None:
        config = scratch_bert_config(tokenizer, model_args, **overrides, **kwargs)
        logger.info("starting from a randomly initialised BERT (%d layers, hidden %d, vocab %d)",
                    config.num_hidden_layers, config.hidden_size, config.vocab_size)
        # an Auto class builds from a config with from_config, a concrete model class (a stage's own) directly
        build = auto_class if isinstance(auto_class, type) and issubclass(auto_class, PreTrainedModel) \
            else auto_class.from_config
        return apply_freezing(build(config), model_args)
    check_weights_format(model_args.model_name_or_path, model_args.allow_pickle_weights)
    if overrides:
        config = model_config(model_args.model_name_or_path, model_args.trust_remote_code)
        unknown = [key for key in overrides if not hasattr(config, key)]
        if unknown:
            raise ConfigError(f"{model_args.model_name_or_path}: a {config.model_type} config has no "
                              f"{', '.join(unknown)}; the dropout options apply to BERT-style encoders")
        logger.info("dropout set for training: %s", ", ".join(f"{k}={v}" for k, v in overrides.items()))
        kwargs = {**overrides, **kwargs}
    model = from_pretrained_quietly(
        auto_class, model_args.model_name_or_path, cache_dir=model_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
        use_safetensors=None if model_args.allow_pickle_weights else True, **kwargs,
    )
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer) and grow_embeddings:
        from finbert2.tokenizer.embeddings import resize_embeddings_mean_init

        base_tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.cache_dir,
                                        model_args.trust_remote_code)
        resize_embeddings_mean_init(model, tokenizer, base_tokenizer)
    elif rows < len(tokenizer):
        raise ConfigError(
            f"{model_args.model_name_or_path}: embeddings have {rows} rows "
            f"but the tokenizer has {len(tokenizer)} tokens; grow them with "
            "finbert2.tokenizer.resize_embeddings_mean_init first"
        )
    return apply_freezing(model, model_args)


def apply_freezing(model, model_args: ModelArguments):
    """Stop gradients to the word embeddings when asked (the Trainer then leaves them out of the optimizer)."""
    if model_args.freeze_word_embeddings:
        weight = model.get_input_embeddings().weight
        weight.requires_grad_(False)
        logger.info("word embeddings frozen (%d x %d, %.1fM parameters not trained)", *weight.shape,
                    weight.numel() / 1e6)
    return model


def _module_names(keys: list[str]) -> list[str]:
    """``cls.predictions.transform.dense.weight`` ... -> ``cls.predictions.transform.dense``, deduplicated."""
    return sorted({key.rsplit(".", 1)[0] if key.endswith((".weight", ".bias")) else key for key in keys})


def from_pretrained_quietly(auto_class, name_or_path: str, **kwargs):
    """``auto_class.from_pretrained`` with transformers' load report replaced by one clear log line.

    Starting a task head on an encoder checkpoint (an MLM head on e5, which released none; a
    classifier on any encoder) is the normal case here, and transformers reports it as a table of
    MISSING keys that reads like a corrupted checkpoint. We log which modules are new instead
    (and whether the MLM decoder is tied to the word embeddings); a checkpoint whose *shapes* do
    not fit stays an error.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = auto_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{name_or_path}: cannot load a model ({str(err).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if info.get("mismatched_keys"):
        raise ConfigError(f"{name_or_path}: checkpoint shapes do not fit {type(model).__name__} "
                          f"({', '.join(str(k) for k in list(info['mismatched_keys'])[:3])})")
    missing = _module_names(list(info.get("missing_keys") or []))
    # Which modules start from the seed, for the stages that treat a new head specially (the MLM prior bias
    # and head warm-up on an encoder that shipped without one).
    model.new_module_names = missing
    if missing:
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied = (output is not None
                and output.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr())
        logger.info("%s: %s starts new %s (not in the checkpoint, initialised from the seed)%s",
                    name_or_path, type(model).__name__, ", ".join(missing),
                    "; the MLM decoder is tied to the word embeddings" if tied else "")
    unexpected = _module_names(list(info.get("unexpected_keys") or []))
    if unexpected:
        logger.info("%s: checkpoint weights %s are not used by %s", name_or_path, ", ".join(unexpected),
                    type(model).__name__)
    return model


PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_weights_format(name_or_path: str, allow_pickle: bool = False) -> None:
    """Refuse a local model folder whose only weights are pickle files, unless allowed."""
    folder = Path(name_or_path)
    if not folder.is_dir() or allow_pickle:
        return
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles:
        raise ConfigError(
            f"{folder}: holds only pickle weights ({', '.join(pickles)}), which can run code when loaded; convert "
            "them to safetensors, or pass --allow_pickle_weights True if you trust the file"
        )


def model_config(name_or_path: str, trust_remote_code: bool = False):
    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def is_local_model(name_or_path: str | None) -> bool:
    return name_or_path is not None and Path(name_or_path).is_dir()
