"""The dense encoder every retrieval command shares: CLS pooling, L2 normalisation, the query instruction.

``DenseEncoder`` turns texts into unit vectors the way the fine-tuning loss sees them, and
``save_sentence_transformer`` writes the same encoder as a sentence-transformers model (Transformer ->
Pooling(cls) -> Normalize, the query instruction recorded as the ``query`` prompt), so
``SentenceTransformer(folder).encode(instruction + query)`` gives the same vectors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from finbert2.errors import ConfigError

logger = logging.getLogger(__name__)

# The instruction upstream prepends to every query (and only to queries) in training and use.
QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


def pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
    """Sentence vectors from token states: the [CLS] state (upstream) or the masked mean."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    raise ConfigError(f"unknown pooling '{pooling}' (cls or mean)")


def saved_sentence_settings(name_or_path: str) -> dict:
    """Pooling, normalisation and prompts a sentence-transformers folder was saved with ({} for anything else).

    A retriever fine-tuned with mean pooling and e5's ``query: ``/``passage: `` prompts must be
    encoded that way: reading the folder's own ``modules.json`` and
    ``config_sentence_transformers.json`` keeps every command (evaluate, mine, index, topics)
    consistent with training. Keys: ``pooling``, ``normalize``, ``prompts``, and ``query_max_length`` /
    ``passage_max_length`` (the token limits a retriever was trained with), each only when saved.
    """
    folder = Path(name_or_path)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():  # a plain transformers folder, or a hub id
        return {}
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        settings: dict = {"normalize": any(m.get("type", "").endswith("Normalize") for m in modules)}
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                pooling = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
                # sentence-transformers 6 writes "pooling_mode"; older versions one boolean per mode
                mode = pooling.get("pooling_mode") or ("cls" if pooling.get("pooling_mode_cls_token") else
                                                       "mean" if pooling.get("pooling_mode_mean_tokens") else None)
                if mode in {"cls", "mean"}:
                    settings["pooling"] = mode
                else:
                    raise ConfigError(f"{folder}: pooling {pooling} is not supported (cls or mean)")
        lengths_file = folder / RETRIEVAL_LENGTHS_FILE
        if lengths_file.is_file():
            lengths = json.loads(lengths_file.read_text(encoding="utf-8"))
            settings.update({k: int(v) for k, v in lengths.items() if k in {"query_max_length", "passage_max_length"}})
        st_config = folder / "config_sentence_transformers.json"
        if st_config.is_file():
            prompts = json.loads(st_config.read_text(encoding="utf-8")).get("prompts")
            if isinstance(prompts, dict) and prompts:
                settings["prompts"] = {str(k): str(v) for k, v in prompts.items()}
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise ConfigError(f"{modules_file}: unreadable sentence-transformers modules ({err})") from None
    return settings


def resolve_prompts(name_or_path: str | None, query: str | None = None,
                    passage: str | None = None) -> tuple[str, str]:
    """``(query prompt, passage prompt)``: the ones given, else the model folder's saved prompts, else
    FinBERT2's query instruction and no passage prompt (upstream's convention for its models)."""
    saved = saved_sentence_settings(name_or_path).get("prompts", {}) if name_or_path else {}
    return (query if query is not None else saved.get("query", QUERY_INSTRUCTION),
            passage if passage is not None else saved.get("document", ""))


def load_encoder_model(name_or_path: str, trust_remote_code: bool = False, cache_dir: str | None = None):
    """``AutoModel`` without the pooler head (CLS pooling reads the raw [CLS] state; an unused head breaks DDP),
    or the ONNX Runtime / OpenVINO model of a folder ``finbert2 export`` wrote."""
    from finbert2.export.runtime import exported_backend, load_exported

    if exported_backend(name_or_path) != "torch":
        return load_exported(name_or_path)
    try:
        return AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, use_safetensors=True,
                                         trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except TypeError:  # architectures without a pooler flag
        return AutoModel.from_pretrained(name_or_path, use_safetensors=True,
                                         trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{name_or_path}: cannot load a model ({str(err).splitlines()[0]})") from None


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask for one batch of token id lists."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, :len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention_mask[r, :len(row)] = 1
    return input_ids, attention_mask


# Padded tokens per forward pass on CPU. Per token, a CPU forward slows as its activations outgrow the
# caches: a 12 x 768 BERT on 512-token texts ran 914 / 882 / 827 padded tokens/s at 4 / 8 / 32 rows in
# fp32 and 1685 / 1506 / 1037 in bf16 (AVX512-BF16, 2 cores; benchmarks/classify_inference/RESULTS.md), and
# the encoder 1.73 / 1.26 passages/s at 4 / 64 rows. A GPU wants large batches: there only ``batch_size``
# bounds a batch.
CPU_BATCH_TOKENS = 2048


def batch_token_bound(requested: int | None, device: torch.device) -> int | None:
    """The padded-token bound of a forward pass: ``requested`` (0: none), or ``None`` asked -> the device's
    default (``CPU_BATCH_TOKENS`` on CPU, none elsewhere)."""
    if requested is None:
        return CPU_BATCH_TOKENS if device.type == "cpu" else None
    return requested or None


def token_budget_batches(lengths: list[int], max_batch_tokens: int | None,
                         max_rows: int | None = None, min_fill: float = 0.0) -> list[list[int]]:
    """Indices of ``lengths`` longest first, cut so each batch's padded size (rows x longest) fits
    ``max_batch_tokens`` and it holds at most ``max_rows`` rows (``None``: no bound of that kind); one
    input longer than the budget runs alone. With ``min_fill``, a row joins a batch only if its own tokens
    fill at least that share of the batch's width: a few concurrent requests of mixed lengths otherwise
    pad their short inputs to the longest one's width, and padded tokens cost as much as real ones."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # Longest first: the first row of a batch sets its padded width.
        if (batches and (max_rows is None or len(batches[-1]) < max_rows)
                and (max_batch_tokens is None or (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens)
                and lengths[i] >= min_fill * lengths[batches[-1][0]]):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class ClsOnlyLastLayer(torch.nn.Module):
    """A BERT-style encoder layer that computes its output at position 0 ([CLS]) only.

    With CLS pooling every other position of the last layer is thrown away, so its queries,
    attention output and feed-forward are computed for [CLS] alone (keys and values still for all
    tokens): the same numbers (fp32, within rounding) for about 1/L less work. The wrapped
    layer's submodules keep their names, so the model's state dict and ``save_pretrained`` are unchanged.
    """

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.attention, self.intermediate, self.output = layer.attention, layer.intermediate, layer.output

    @staticmethod
    def fits(layer: torch.nn.Module) -> bool:
        """BERT/RoBERTa-shaped layers only (self-attention query/key/value, output, feed-forward)."""
        attention = getattr(getattr(layer, "attention", None), "self", None)
        return (all(hasattr(attention, name) for name in ("query", "key", "value", "num_attention_heads",
                                                           "attention_head_size", "scaling"))
                and hasattr(layer.attention, "output") and hasattr(layer, "intermediate")
                and hasattr(layer, "output") and not getattr(layer, "is_decoder", False))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        attention = self.attention.self
        batch, length, _ = hidden_states.shape
        heads, head_size = attention.num_attention_heads, attention.attention_head_size
        cls_state = hidden_states[:, :1]
        query = attention.query(cls_state).view(batch, 1, heads, head_size).transpose(1, 2)
        key = attention.key(hidden_states).view(batch, length, heads, head_size).transpose(1, 2)
        value = attention.value(hidden_states).view(batch, length, heads, head_size).transpose(1, 2)
        if attention_mask is not None:  # the model's 4-D mask (boolean or additive): the [CLS] row
            attention_mask = attention_mask[:, :, :1, :] if attention_mask.dim() == 4 else \
                attention_mask[:, None, None, :].bool()
        context = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                                   scale=attention.scaling)
        context = context.transpose(1, 2).reshape(batch, 1, heads * head_size)
        attended = self.attention.output(context, cls_state)
        return self.output(self.intermediate(attended), attended)  # (batch, 1, hidden): [CLS] only


def last_layer_at_cls_only(model: torch.nn.Module) -> bool:
    """Swap the last encoder layer of ``model`` (a base model, ``BertModel``-like) for ``ClsOnlyLastLayer``
    where it fits; True if swapped. Only for a model whose caller reads the last layer's [CLS] alone and
    does not train it. The layers must get the dense 4-D mask (sdpa, eager): flash kernels unpad instead.

    transformers 5 records ``hidden_states`` with hooks on its own layer classes and puts the final state
    last: with the swap that tuple loses the second-to-last layer's entry, ``[-1]`` stays the [CLS] state.
    A 1-layer model would record none at all, so it keeps its layer."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    dense_mask = getattr(model.config, "_attn_implementation", None) in {"sdpa", "eager"}
    if not (dense_mask and layers is not None and len(layers) > 1 and ClsOnlyLastLayer.fits(layers[-1])):
        return False
    layers[-1] = ClsOnlyLastLayer(layers[-1])
    return True


class DenseEncoder:
    """Encode queries and passages to L2-normalised vectors in length-sorted batches.

    Batches are sorted by token count, so padding is nearly nil, and hold at most ``batch_size`` texts and
    ``max_batch_tokens`` padded tokens (default 2048 on CPU); ``from_pretrained`` with CLS pooling
    computes the last layer at [CLS] only (``ClsOnlyLastLayer``); ``bf16`` runs the forward pass under bf16 autocast
    (about 2x on CPU, cosine ~0.999 to fp32); vectors are returned as float32 numpy arrays.
    """

    def __init__(self, model, tokenizer, pooling: str = "cls", normalize: bool = True,
                 query_instruction: str = QUERY_INSTRUCTION, max_length: int = 512,
                 batch_size: int = 64, bf16: bool = False, device: str | None = None,
                 passage_instruction: str = "", max_batch_tokens: int | None = None,
                 query_max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.query_instruction = query_instruction or ""
        self.passage_instruction = passage_instruction or ""
        self.max_length = max_length
        # queries are cut where the retriever was trained to see them (default: the passages' limit)
        self.query_max_length = query_max_length
        self.batch_size = batch_size
        self.bf16 = bf16
        self.sort_chunk = 8192  # texts tokenized and length-sorted together (bounds memory on huge corpora)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Padded tokens a forward pass, besides batch_size rows (None: the device's default; 0: no bound).
        self.max_batch_tokens = batch_token_bound(max_batch_tokens, self.device)
        self.model.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer_name: str | None = None,
                        trust_remote_code: bool = False, pooling: str | None = None,
                        normalize: bool | None = None, query_instruction: str | None = None,
                        passage_instruction: str | None = None, **kwargs) -> DenseEncoder:
        """Load a folder or hub id; ``pooling``/``normalize`` and the prompts left None follow the
        folder's saved sentence-transformers settings when it has them, else CLS + L2 and FinBERT2's
        query instruction (upstream)."""
        saved = saved_sentence_settings(name_or_path)
        query_instruction, passage_instruction = resolve_prompts(name_or_path, query_instruction,
                                                                 passage_instruction)
        if pooling is not None and saved.get("pooling", pooling) != pooling:
            logger.warning("%s was saved with %s pooling; encoding with %s as asked", name_or_path,
                           saved["pooling"], pooling)
        pooling = pooling or saved.get("pooling", "cls")
        normalize = saved.get("normalize", True) if normalize is None else normalize
        if "query_max_length" in saved:
            kwargs.setdefault("query_max_length", saved["query_max_length"])
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or name_or_path,
                                                      trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{tokenizer_name or name_or_path}: cannot load a tokenizer "
                              f"({str(err).splitlines()[0]})") from None
        model = load_encoder_model(name_or_path, trust_remote_code)
        # This model is ours alone (a model handed to __init__ may be in training): with CLS pooling
        # its last layer needs only [CLS].
        if pooling == "cls":
            last_layer_at_cls_only(model)
        if not isinstance(model, torch.nn.Module):  # an exported graph: on the CPU, at its exported precision
            kwargs.update(device="cpu", bf16=False)
        return cls(model, tokenizer, pooling=pooling, normalize=normalize, query_instruction=query_instruction,
                   passage_instruction=passage_instruction, **kwargs)

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode(self, texts: list[str], prompt: str = "", batch_size: int | None = None,
               show_progress: bool = False, max_length: int | None = None) -> np.ndarray:
        """Vectors of ``prompt + text`` for each text, in input order, cut at ``max_length`` tokens (default:
        the encoder's)."""
        batch_size = batch_size or self.batch_size
        max_length = max_length or self.max_length
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(texts), desc="encode", unit="text")
        # Tokenize a chunk at once and batch it by token count, longest first: batches then hold
        # texts of (nearly) one length, so there is almost no padding (sorting by characters left
        # ~17% padding on the demo passages); the first batch shows the peak memory.
        for chunk_start in range(0, len(texts), self.sort_chunk):
            chunk = [prompt + t for t in texts[chunk_start:chunk_start + self.sort_chunk]]
            ids = self.tokenizer(chunk, truncation=True, max_length=max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            for rows in token_budget_batches([len(x) for x in ids], self.max_batch_tokens, batch_size):
                emb = self.pooled([ids[i] for i in rows])
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                vectors[[chunk_start + i for i in rows]] = emb.numpy()
                if progress is not None:
                    progress.update(len(rows))
        if progress is not None:
            progress.close()
        return vectors

    @torch.inference_mode()  # the server's batcher calls this directly: without it, autograd costs ~2.5x
    def pooled(self, rows: list[list[int]]) -> torch.Tensor:
        """Pooled float32 CPU vectors (not normalised) of one batch of token id lists (special tokens
        included): the forward pass ``encode`` and the server's batcher share."""
        input_ids, attention_mask = self._pad(rows)
        with self._autocast():
            states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(states, attention_mask, self.pooling).float().cpu()

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, attention_mask = pad_batch(rows, pad_id)
        return input_ids.to(self.device), attention_mask.to(self.device)

    def encode_queries(self, queries: list[str], **kwargs) -> np.ndarray:
        kwargs.setdefault("max_length", self.query_max_length)
        return self.encode(queries, prompt=self.query_instruction, **kwargs)

    def encode_passages(self, passages: list[str], **kwargs) -> np.ndarray:
        return self.encode(passages, prompt=self.passage_instruction, **kwargs)


ST_FILES = {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"}
# The token limits a retriever was trained with (sentence-transformers keeps one max_seq_length for both).
RETRIEVAL_LENGTHS_FILE = "retrieval_lengths.json"


def save_retrieval_lengths(folder: str | Path, query_max_length: int, passage_max_length: int) -> None:
    """Record the query and passage token limits of training, read back by ``saved_sentence_settings``."""
    (Path(folder) / RETRIEVAL_LENGTHS_FILE).write_text(
        json.dumps({"query_max_length": int(query_max_length), "passage_max_length": int(passage_max_length)}),
        encoding="utf-8")


def default_prompts(query_instruction: str = QUERY_INSTRUCTION, passage_instruction: str = "") -> dict[str, str]:
    """The prompts saved with a retriever: ``query`` and ``document`` (sentence-transformers' names)."""
    return {"query": query_instruction, "document": passage_instruction}


def save_sentence_transformer(folder: str | Path, prompts: dict[str, str] | None = None,
                              max_seq_length: int = 512, pooling: str = "cls", normalize: bool = True) -> Path:
    """Turn an HF encoder folder into a sentence-transformers model in place.

    Writes ``modules.json``, ``1_Pooling/``, ``2_Normalize/`` and ``config_sentence_transformers.json``
    with ``prompts`` (default: FinBERT2's ``{"query": instruction, "document": ""}``; e5:
    ``query: ``/``passage: ``): ``encode_query``/``encode_document`` (or ``encode(...,
    prompt_name=...)``) add them; plain ``encode`` does not, as in upstream's README, where the
    caller prepends the instruction. Every later command reads the prompts back from the folder.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    folder = Path(folder)
    transformer = Transformer(str(folder), max_seq_length=max_seq_length,
                              model_kwargs={"add_pooling_layer": False})
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, prompts=dict(prompts or default_prompts()),
                                similarity_fn_name="cosine", device="cpu")
    # Saved aside and only sentence-transformers' own files copied in: its save would rewrite the
    # weights as a bare encoder, dropping what else the folder holds (a pretraining stage's MLM head).
    with tempfile.TemporaryDirectory(prefix="finbert2-st-", dir=folder) as tmp:
        model.save(tmp)
        for entry in Path(tmp).iterdir():
            if entry.name in ST_FILES or entry.name.endswith(("_Pooling", "_Normalize")):
                target = folder / entry.name
                if entry.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(entry, target)
                else:
                    shutil.copyfile(entry, target)
    return folder


def inherit_sentence_settings(source: str | None, folder: str | Path, max_seq_length: int = 512,
                              pooling: str | None = None) -> bool:
    """Give ``folder`` (a stage's saved encoder) the pooling, normalisation and prompts of the model it
    started from, when that was a sentence-transformers folder (e5 as converted), with ``pooling``
    instead of the saved one when given; True if it wrote them. A plain BERT start (FinBERT2-style)
    with no pooling asked for leaves a plain folder (CLS pooling and FinBERT2's instruction then)."""
    saved = saved_sentence_settings(source) if source and Path(source).is_dir() else {}
    if "pooling" not in saved and (pooling is None or pooling == "cls"):
        return False
    save_sentence_transformer(folder, prompts=saved.get("prompts"), max_seq_length=max_seq_length,
                              pooling=pooling or saved["pooling"], normalize=saved.get("normalize", True))
    return True
