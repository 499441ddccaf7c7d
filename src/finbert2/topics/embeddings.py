"""Document vectors for topic modeling: an encoder (CLS pooling, normalised), a saved ``.npy``, or TF-IDF/LSA.

- ``load_encoder``: a sentence-transformers model from a folder or hub id. A folder that is already
  a sentence-transformers model (``modules.json``, e.g. the retriever stage's output) loads as it
  is; a plain transformers folder (``AutoModel``) gets CLS pooling and normalisation, the way
  FinBERT2 and Fin-Retriever embed text.
- ``scratch_encoder``: the offline demo path, a seeded randomly initialised BERT over a tokenizer.
- ``LsaEmbedder``: the classical baseline, TF-IDF over jieba words reduced by truncated SVD (LSA),
  saved as safetensors + JSON so a loaded topic model can embed new titles with it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from finbert2.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
LSA_DIR = "lsa"


def is_sentence_transformers_folder(path: str | Path) -> bool:
    return (Path(path) / "modules.json").is_file()


def load_encoder(model_name_or_path: str, tokenizer_name: str | None = None, max_seq_length: int = 128,
                 trust_remote_code: bool = False, cache_dir: str | None = None):
    """A ``SentenceTransformer`` that embeds with CLS pooling + L2 normalisation (or the folder's own modules)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    try:
        if is_sentence_transformers_folder(model_name_or_path) and tokenizer_name is None:
            model = SentenceTransformer(model_name_or_path, device="cpu", trust_remote_code=trust_remote_code,
                                        cache_folder=cache_dir)
            model.max_seq_length = max_seq_length
            return model
        # a separate tokenizer only when asked (sentence-transformers deprecates the argument)
        extra = {"tokenizer_name_or_path": tokenizer_name} if tokenizer_name else {}
        transformer = Transformer(
            model_name_or_path,
            max_seq_length=max_seq_length,
            **extra,
            model_kwargs={"trust_remote_code": trust_remote_code, "use_safetensors": True, "cache_dir": cache_dir},
            processor_kwargs={"trust_remote_code": trust_remote_code, "cache_dir": cache_dir},
            config_kwargs={"trust_remote_code": trust_remote_code, "cache_dir": cache_dir},
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"{model_name_or_path}: cannot load an encoder ({str(err).splitlines()[0]})") from None
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


CLUSTERING_PROMPT = "clustering"


NO_PROMPT = "none"


def topic_prompt(model, prompt_name: str | None = None) -> str:
    """The text prepended to titles: the model's saved ``prompt_name`` prompt, by default its
    ``clustering`` prompt if it has one (e5: ``query: ``), else nothing; ``none``: no prompt."""
    prompts = getattr(model, "prompts", None) or {}
    if prompt_name == NO_PROMPT:
        return ""
    if prompt_name is None:
        return prompts.get(CLUSTERING_PROMPT, "")
    if prompt_name not in prompts:
        raise ConfigError(f"topics: the encoder has no prompt '{prompt_name}' (it has: {', '.join(prompts) or 'none'})")
    return prompts[prompt_name]


def scratch_encoder(tokenizer_name: str, folder: str | Path, seed: int, max_seq_length: int = 128,
                    hidden_size: int = 128, num_hidden_layers: int = 2, num_attention_heads: int = 2,
                    intermediate_size: int = 256):
    """A seeded random BERT over ``tokenizer_name``, saved to ``folder`` and loaded as an encoder.

    Only for the offline demo: its vectors carry little meaning beyond shared characters, which is
    why the quickstart passes its trained retriever instead.
    """
    import torch
    from transformers import AutoModel

    from finbert2.modeling import ModelArguments, load_model, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    model_args = ModelArguments(tokenizer_name=tokenizer_name, tiny_hidden_size=hidden_size,
                                tiny_num_hidden_layers=num_hidden_layers, tiny_num_attention_heads=num_attention_heads,
                                tiny_intermediate_size=intermediate_size)
    torch.manual_seed(seed)
    model = load_model(AutoModel, model_args, tokenizer)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_encoder(str(folder), max_seq_length=max_seq_length)


def encode(model, texts: list[str], batch_size: int = 64, show_progress_bar: bool = True,
           prompt: str = "") -> np.ndarray:
    """Normalised float32 vectors of ``prompt + text``, one row per text."""
    vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar,
                           convert_to_numpy=True, normalize_embeddings=True, prompt=prompt or None)
    return np.asarray(vectors, dtype=np.float32)


def load_npy_embeddings(path: str | Path, n_docs: int) -> np.ndarray:
    """A precomputed ``(n_docs, dim)`` float matrix, checked against the documents."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    try:
        vectors = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise DataError(path, None, f"not a .npy array ({err})") from None
    if vectors.ndim != 2:
        raise DataError(path, None, f"expected a 2-D array (documents x dimensions), got shape {vectors.shape}")
    if vectors.shape[0] != n_docs:
        raise DataError(path, None, f"has {vectors.shape[0]} rows but there are {n_docs} documents")
    if not np.issubdtype(vectors.dtype, np.floating) or not np.isfinite(vectors).all():
        raise DataError(path, None, "expected finite floating-point values")
    return vectors.astype(np.float32)


class LsaEmbedder:
    """TF-IDF over words (the same jieba tokenizer as the topic words) then truncated SVD, normalised."""

    def __init__(self, tokenizer, n_components: int = 100, min_df: int = 1, seed: int = 42):
        self.tokenizer = tokenizer
        self.n_components = n_components
        self.min_df = min_df
        self.seed = seed
        self.vocabulary: dict[str, int] | None = None
        self.idf: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def fit_transform(self, texts: list[str]) -> np.ndarray:
        tfidf = TfidfVectorizer(tokenizer=self.tokenizer, token_pattern=None, lowercase=False, min_df=self.min_df)
        weights = tfidf.fit_transform(texts)
        n_components = max(1, min(self.n_components, weights.shape[1] - 1, weights.shape[0] - 1))
        svd = TruncatedSVD(n_components=n_components, random_state=self.seed)
        svd.fit(weights)
        self.vocabulary = {word: int(i) for word, i in tfidf.vocabulary_.items()}
        self.idf = np.ascontiguousarray(tfidf.idf_, dtype=np.float64)
        # C order: safetensors writes the raw buffer, and SVD's components_ can be Fortran-ordered
        self.components = np.ascontiguousarray(svd.components_, dtype=np.float64)
        return self.transform(texts)

    def _tfidf(self, texts: list[str]) -> sparse.csr_matrix:
        rows, cols, values = [], [], []
        for r, text in enumerate(texts):
            counts: dict[int, int] = {}
            for word in self.tokenizer(text):
                col = self.vocabulary.get(word)
                if col is not None:
                    counts[col] = counts.get(col, 0) + 1
            for col, count in counts.items():
                rows.append(r)
                cols.append(col)
                values.append(count * self.idf[col])
        matrix = sparse.csr_matrix((values, (rows, cols)), shape=(len(texts), len(self.vocabulary)))
        return normalize(matrix)  # TfidfVectorizer's default l2 norm

    def transform(self, texts: list[str]) -> np.ndarray:
        if self.components is None:
            raise RuntimeError("LsaEmbedder.transform before fit_transform/load")
        return normalize(self._tfidf(texts) @ self.components.T).astype(np.float32)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"idf": self.idf, "components": self.components}, str(folder / "lsa.safetensors"))
        (folder / "vocabulary.json").write_text(
            json.dumps({"vocabulary": self.vocabulary, "min_df": self.min_df, "seed": self.seed},
                       ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, tokenizer) -> LsaEmbedder:
        folder = Path(folder)
        tensors = load_file(str(folder / "lsa.safetensors"))
        meta = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
        embedder = cls(tokenizer, n_components=tensors["components"].shape[0], min_df=meta["min_df"],
                       seed=meta["seed"])
        embedder.vocabulary, embedder.idf, embedder.components = meta["vocabulary"], tensors["idf"], tensors["components"]
        return embedder

