"""The server's search index: documents split into windows, their vectors in faiss, BM25 over the same
windows, kept in an index folder that every write replaces atomically.

Folder layout: ``CURRENT`` names the generation folder in use (``gen-00000007/``), which holds the
files of ``finbert2 retrieve index`` (``index.faiss``, ``docs.jsonl`` with one row per window,
``index_config.json``). A write builds the next generation beside it, fsyncs it, and only then
rewrites ``CURRENT`` (an atomic rename): a crash at any point leaves the last good generation, and
an acknowledged write is on disk. A folder written by ``retrieve index`` (files at the top, one
window per document) is served as it is; the first write turns it into generations.

Several server processes may share one folder: writes hold an exclusive lock on ``.lock`` and
start from the newest generation on disk, and every search first checks ``CURRENT`` (one small
read) and reloads when another process moved it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finbert2.data import atomic_write_text, iter_jsonl
from finbert2.errors import ConfigError
from finbert2.retrieve.index import (
    CURRENT,
    DOCS_FILE,
    INDEX_CONFIG,
    INDEX_FILE,
    current_index_dir,
)
from finbert2.retrieve.search import (
    BM25Retriever,
    build_index,
    format_document,
    jieba_tokens,
    reciprocal_rank_fusion,
)

GENERATION_PREFIX = "gen-"
LOCK_FILE = ".lock"
TEXT_FIELDS = ("text", "content")


def split_windows(text: str, window_chars: int, stride: int) -> list[str]:
    """Overlapping character windows (upstream: 400 characters every 380); a short text is one window."""
    if len(text) <= window_chars:
        return [text]
    starts = range(0, max(len(text) - window_chars, 0) + stride, stride)
    return [text[s:s + window_chars] for s in starts if s < len(text)]


@dataclass(frozen=True)
class IndexState:
    """One immutable version of the index: searches read a state while a write builds the next."""

    windows: list[dict[str, Any]]  # {"id", "record", "encoded_text", "window"} per vector row
    vectors: np.ndarray  # (windows, dimension), unit rows
    tokens: list[list[str]]  # BM25 words of each window
    faiss_index: Any
    bm25: BM25Retriever | None
    generation: int

    @classmethod
    def build(cls, windows, vectors, tokens, generation, segmenter) -> IndexState:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        bm25 = BM25Retriever([str(i) for i in range(len(windows))], None, segmenter=segmenter,
                             doc_tokens=tokens) if windows else None
        return cls(windows, vectors, tokens, build_index(vectors) if windows else None, bm25, generation)

    @property
    def document_ids(self) -> list[str]:
        return list(dict.fromkeys(w["id"] for w in self.windows))


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DocumentIndex:
    """Load, search and update an index folder, safely shared by several processes."""

    def __init__(self, folder: str | Path, dimension: int, model_config: dict[str, Any], segmenter=None,
                 window_chars: int = 400, window_stride: int = 380):
        self.folder = Path(folder)
        self.dimension, self.model_config, self.segmenter = dimension, model_config, segmenter
        self.window_chars, self.window_stride = window_chars, window_stride
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.write_lock():  # a generation a crash left half-written is removed only under the lock
            self.state = self._load()
            self._remove_stale_generations(current_index_dir(self.folder))

    @contextlib.contextmanager
    def write_lock(self):
        """Exclusive across processes (flock: released by the kernel when a holder dies, even by SIGKILL)."""
        with open(self.folder / LOCK_FILE, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # --- reading -------------------------------------------------------------------------------------
    def _on_disk_generation(self) -> int:
        source = current_index_dir(self.folder)
        return int(source.name[len(GENERATION_PREFIX):]) if source != self.folder else 0

    def refresh(self) -> None:
        """Serve the newest generation on disk, when another process wrote one."""
        if self._on_disk_generation() != self.state.generation:
            with self.write_lock():  # no writer replaces (and deletes) it while it is read
                self.state = self._load()

    def _load(self) -> IndexState:
        import faiss

        source = current_index_dir(self.folder)
        generation = self._on_disk_generation()
        if not (source / INDEX_FILE).is_file():
            return IndexState.build([], np.zeros((0, self.dimension), np.float32), [], generation, self.segmenter)
        config = json.loads((source / INDEX_CONFIG).read_text(encoding="utf-8"))
        if int(config.get("dimension", self.dimension)) != self.dimension:
            raise ConfigError(f"{source}: index of dimension {config['dimension']}, the retriever's is {self.dimension}")
        index = faiss.read_index(str(source / INDEX_FILE))
        if hasattr(index, "make_direct_map"):  # an IVF index from `retrieve index`: vectors read back by row
            index.make_direct_map()
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, self.dimension), np.float32)
        windows = []
        for _, row in iter_jsonl(source / DOCS_FILE):
            windows.append({"id": str(row["id"]), "record": row.get("record", {}),
                            "encoded_text": row["encoded_text"], "window": int(row.get("window", 0))})
        if len(windows) != len(vectors):
            raise ConfigError(f"{source}: {len(vectors)} vectors but {len(windows)} rows in {DOCS_FILE}")
        tokens = [jieba_tokens(w["encoded_text"], self.segmenter) for w in windows]
        return IndexState.build(windows, vectors, tokens, generation, self.segmenter)

    def _remove_stale_generations(self, keep: Path) -> None:
        """Generations a crash left half-written (never named by ``CURRENT``) or already replaced."""
        for entry in self.folder.iterdir():
            if entry.is_dir() and entry.name.startswith(GENERATION_PREFIX) and entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(f".{CURRENT}.") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)

    @property
    def documents(self) -> int:
        return len(self.state.document_ids)

    @property
    def windows(self) -> int:
        return len(self.state.windows)

    @property
    def location(self) -> str:
        return str(self.folder)

    def window_texts(self, record: dict[str, Any]) -> list[str]:
        return split_windows(format_document(record), self.window_chars, self.window_stride)

    # --- writing -------------------------------------------------------------------------------------
    def add(self, records: list[dict[str, Any]], window_vectors: list[np.ndarray]) -> int:
        """Add ``records`` (``{"id", ...}``, one vector per window each), replacing any with the same id;
        returns how many were replaced. On disk when it returns."""
        with self.write_lock():
            self.state = self._load() if self._on_disk_generation() != self.state.generation else self.state
            replaced = len({str(r["id"]) for r in records} & set(self.state.document_ids))
            self._commit(self._with_documents(records, window_vectors))
        return replaced

    def delete(self, ids: list[str]) -> list[str]:
        """Delete documents by id; returns the ids that were not there. On disk when it returns."""
        with self.write_lock():
            self.state = self._load() if self._on_disk_generation() != self.state.generation else self.state
            present = set(self.state.document_ids)
            missing = [i for i in dict.fromkeys(ids) if i not in present]
            if len(missing) < len(set(ids)):
                self._commit(self._without_documents(ids))
        return missing

    def _with_documents(self, records: list[dict[str, Any]], window_vectors: list[np.ndarray]) -> IndexState:
        old = self.state
        replaced = {str(r["id"]) for r in records}
        keep = [i for i, w in enumerate(old.windows) if w["id"] not in replaced]
        windows = [old.windows[i] for i in keep]
        tokens = [old.tokens[i] for i in keep]
        vectors = [old.vectors[keep]]
        for record, vecs in zip(records, window_vectors):
            texts = self.window_texts(record)
            windows += [{"id": str(record["id"]), "record": record, "encoded_text": t, "window": n}
                        for n, t in enumerate(texts)]
            tokens += [jieba_tokens(t, self.segmenter) for t in texts]
            vectors.append(vecs)
        return IndexState.build(windows, np.concatenate(vectors), tokens, old.generation + 1, self.segmenter)

    def _without_documents(self, ids: list[str]) -> IndexState:
        old = self.state
        gone = set(ids)
        keep = [i for i, w in enumerate(old.windows) if w["id"] not in gone]
        return IndexState.build([old.windows[i] for i in keep], old.vectors[keep], [old.tokens[i] for i in keep],
                                old.generation + 1, self.segmenter)

    def _commit(self, state: IndexState) -> None:
        """Write ``state`` as the next generation, point ``CURRENT`` at it, and serve it (under the lock)."""
        import faiss

        target = self.folder / f"{GENERATION_PREFIX}{state.generation:08d}"
        shutil.rmtree(target, ignore_errors=True)  # a half-written one from a crash
        target.mkdir(parents=True)
        index = state.faiss_index if state.faiss_index is not None else faiss.IndexFlatIP(self.dimension)
        _fsync_write(target / INDEX_FILE, faiss.serialize_index(index).tobytes())
        _fsync_write(target / DOCS_FILE, "".join(json.dumps(w, ensure_ascii=False) + "\n"
                                                 for w in state.windows).encode("utf-8"))
        config = {**self.model_config, "index_type": "flat", "dimension": self.dimension,
                  "documents": len(state.document_ids), "windows": len(state.windows),
                  "window_chars": self.window_chars, "window_stride": self.window_stride}
        _fsync_write(target / INDEX_CONFIG, (json.dumps(config, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
        _fsync_dir(target)
        atomic_write_text(self.folder / CURRENT, target.name + "\n")  # the commit point
        _fsync_dir(self.folder)
        self.state = state
        self._remove_stale_generations(target)

    # --- searching -----------------------------------------------------------------------------------
    def search(self, query_vector: np.ndarray | None, query_text: str, top_k: int, mode: str,
               filters: dict[str, Any] | None, rrf_k: int) -> list[dict[str, Any]]:
        """Hits ``{id, score, dense_rank, bm25_rank, dense_score, bm25_score, text, window, fields}``: each
        document scores as its best window; ``hybrid`` fuses the dense and BM25 rankings (RRF)."""
        state = self.state
        if not state.windows:
            return []
        allowed = [i for i, w in enumerate(state.windows) if matches(w, filters)] if filters else None
        if allowed is not None and not allowed:
            return []
        depth = max(top_k, 100)  # documents each retriever hands to the fusion
        dense = best_windows(self._dense_scores(state, query_vector, allowed, depth), state, depth) if mode != "bm25" else {}
        bm25 = best_windows(self._bm25_scores(state, query_text, allowed), state, depth) if mode != "dense" else {}
        return document_hits(dense, bm25, mode, top_k, rrf_k, depth)

    @staticmethod
    def _dense_scores(state: IndexState, query_vector: np.ndarray, allowed: list[int] | None,
                      depth: int) -> dict[int, float]:
        if allowed is None:
            # Enough windows that the best `depth` documents are almost surely among them.
            k = min(len(state.windows), max(1000, 10 * depth))
            scores, rows = state.faiss_index.search(query_vector.reshape(1, -1).astype(np.float32), k)
            return {int(r): float(s) for s, r in zip(scores[0], rows[0]) if r >= 0}
        # A filtered search scores the allowed rows exactly (what a flat index does, on the subset).
        scores = state.vectors[allowed] @ query_vector.astype(np.float32)
        return {row: float(s) for row, s in zip(allowed, scores)}

    @staticmethod
    def _bm25_scores(state: IndexState, query_text: str, allowed: list[int] | None) -> dict[int, float]:
        if not jieba_tokens(query_text, state.bm25.segmenter):
            return {}
        run = state.bm25.run(["q"], [query_text], k=len(state.windows))["q"]
        rows = {int(r): s for r, s in run.items()}
        if allowed is not None:
            allowed_set = set(allowed)
            rows = {r: s for r, s in rows.items() if r in allowed_set}
        return rows


def best_windows(row_scores: dict[int, float], state: IndexState,
                 depth: int) -> dict[str, tuple[float, dict[str, Any]]]:
    """``{document id: (best window score, that window's hit part)}`` of the ``depth`` best documents."""
    best: dict[str, tuple[float, int]] = {}
    for row, score in row_scores.items():
        doc_id = state.windows[row]["id"]
        # Ties go to the first window (rows of a document are in window order), whatever order scored them.
        if doc_id not in best or (-score, row) < (-best[doc_id][0], best[doc_id][1]):
            best[doc_id] = (score, row)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))
    return {doc_id: (score, window_hit(state.windows[row])) for doc_id, (score, row) in ranked[:depth]}


def window_hit(window: dict[str, Any]) -> dict[str, Any]:
    return {"encoded_text": window["encoded_text"], "window": window["window"],
            "fields": {k: v for k, v in window["record"].items() if k not in TEXT_FIELDS}}


def document_hits(dense: dict[str, tuple[float, dict]], bm25: dict[str, tuple[float, dict]], mode: str,
                  top_k: int, rrf_k: int, depth: int) -> list[dict[str, Any]]:
    """The response's hits from each retriever's ``{document id: (score, best window)}`` (best first):
    one ranking, or (``hybrid``) their reciprocal-rank fusion. Shared by both stores."""
    dense_ranked = list(dense)[:depth]
    bm25_ranked = list(bm25)[:depth]
    if mode == "dense":
        order = {d: dense[d][0] for d in dense_ranked}
    elif mode == "bm25":
        order = {d: bm25[d][0] for d in bm25_ranked}
    else:
        order = reciprocal_rank_fusion([dense_ranked, bm25_ranked], rrf_k)
    dense_rank = {d: r for r, d in enumerate(dense_ranked, start=1)}
    bm25_rank = {d: r for r, d in enumerate(bm25_ranked, start=1)}
    hits = []
    for doc_id, score in list(order.items())[:top_k]:
        window = (dense.get(doc_id) or bm25[doc_id])[1]
        hits.append({"id": doc_id, "score": float(score), "dense_rank": dense_rank.get(doc_id),
                     "bm25_rank": bm25_rank.get(doc_id),
                     "dense_score": float(dense[doc_id][0]) if doc_id in dense else None,
                     "bm25_score": float(bm25[doc_id][0]) if doc_id in bm25 else None,
                     "text": window["encoded_text"], "window": window["window"], "fields": window["fields"]})
    return hits


def matches(window: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Every filter field equals the stored field (a list of values: any of them); ``id`` filters by id."""
    for name, wanted in filters.items():
        value = window["id"] if name == "id" else window["record"].get(name)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True
