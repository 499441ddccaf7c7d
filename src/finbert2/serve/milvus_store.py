"""The server's search index in Milvus: one collection of windows, written and searched by the engine.

``finbert2 serve --index URI`` picks it when URI is a Milvus Lite file (``*.db``: embedded, nothing to
start) or a Milvus server (``http(s)://host:port``, with ``--index_token``); any other path is the folder
store (``store.DocumentIndex``). Each row is one window: its document id, window number, text, the
document's stored fields (JSON), its vector (inner product on unit vectors, what the retriever was
trained for) and a BM25 sparse vector that the engine's BM25 function makes from a text field.

The embedded engine is Milvus Lite 2.5 (``milvus-lite==2.5.1``, the last release of its C++ engine; the
3.x releases are a pure-Python rewrite whose searches read every row): ``MilvusClient("FILE.db")`` starts
its engine as a child process serving this process alone on a unix socket, and a server speaks the same
protocol, so one code path serves both.

BM25 ranks exactly as the folder store's: the BM25 text field holds our own jieba words (the same
``jieba_tokens`` and user dictionary), each written as the hex of its UTF-8 bytes (``hex_word``), so the
engine's ``standard`` tokenizer reads back exactly our words whatever they contain, and the engine keeps
the IDF and average length of the whole collection current as documents come and go (Lucene BM25,
k1=1.5, b=0.75, bm25s's scoring). Dense and BM25 searches rank windows and keep each document's best
window; the two document rankings are fused with ``reciprocal_rank_fusion``, as the folder store and
``retrieve evaluate --hybrid`` do.

A write touches only the documents it names: an upsert of their windows (primary key: document id and
window number), then a delete of windows a shorter new version no longer has. It returns once the
engine holds it: Milvus Lite 2.5 commits it to its file (a SQLite database, fdatasync'd) before answering,
so a killed process, engine included, loses nothing acknowledged; a Milvus server once the write is in its message
log. Milvus Lite allows one process per file: several serve workers share one index through a server
(``python -m finbert2.serve.lite_server FILE.db HOST:PORT``, Milvus Lite's engine on a TCP port, or a
Milvus cluster) and see each other's writes at once (searches ask for strong consistency).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finbert2.errors import ConfigError
from finbert2.retrieve.search import format_document, jieba_tokens
from finbert2.serve.errors import ApiError
from finbert2.serve.store import TEXT_FIELDS, document_hits, matches, split_windows

COLLECTION = "finbert2_windows"
MAX_TEXT = 65535  # Milvus's longest VARCHAR
MAX_ID_BYTES = 65000  # an id (and the JSON of a document's fields) with room for the key's JSON around it
INT64 = (-2**63, 2**63 - 1)
COUNT_SECONDS = 5.0  # /info and /metrics counts of another worker's writes may lag this much
OUTPUT_FIELDS = ["doc_id", "window", "text", "fields"]
BM25_K1, BM25_B = 1.5, 0.75  # the folder store's (bm25s) parameters
MAX_LIMIT = 16384  # Milvus's largest search limit
MAX_TOKEN_CHARS = 100  # Milvus Lite 2.5's standard tokenizer splits longer tokens (measured)
PROBE_WINDOWS = 64  # window keys looked up per document at a time (a 400-character window: 25,600 characters)
MILVUS_TOKEN_ENV = "FINBERT2_MILVUS_TOKEN"
LITE_NAME = re.compile(r"[A-Za-z0-9._-]+")  # the file names Milvus Lite 2.5 opens (and under 36 characters)
# Where indexes built before the model and window settings moved to the schema's description kept them (a
# collection property: Milvus Lite 2.5 drops properties, keeps the description).
CONFIG_PROPERTY = "finbert2.index"
# A bulk write (`retrieve index --index`, the importer) fills this collection and renames it when done, so
# an interrupted one never leaves a collection under the index's name.
BUILDING_SUFFIX = "__building"
# Milvus Lite 2.5 cannot rename a collection: while a bulk write fills (or copies into) the index's own name,
# a collection of this suffix marks it as cut short, and readers refuse it.
INCOMPLETE_SUFFIX = "__incomplete"


def is_milvus_uri(location: str) -> bool:
    """A Milvus Lite file or a Milvus server, as opposed to an index folder."""
    return location.startswith(("http://", "https://")) or location.endswith(".db")


def bm25_text(text: str, segmenter=None) -> str:
    """Our BM25 words of ``text`` as the engine's analyzer will read them back (one hex word each)."""
    return hex_words(jieba_tokens(text, segmenter))


def hex_words(tokens: list[str]) -> str:
    return " ".join(map(hex_word, tokens))


def hex_word(token: str) -> str:
    """One word as one analyzer token: the hex of its UTF-8 bytes, or for a word over 50 bytes (an ASCII run,
    a URL) its digest behind a ``z``, which no hex word has: Milvus Lite 2.5's ``standard`` tokenizer cuts
    tokens of over 100 characters into pieces, so two long words sharing their first 50 bytes would match."""
    encoded = token.encode("utf-8")
    if len(encoded) * 2 <= MAX_TOKEN_CHARS:
        return encoded.hex()
    return "z" + hashlib.blake2b(encoded, digest_size=16).hexdigest()


def milvus_string(value: str) -> str:
    """A Milvus expression string literal (the escapes every Milvus parser reads)."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def milvus_literal(value: Any) -> str | None:
    """A scalar filter value as an expression literal; None for what no stored field can equal here."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if INT64[0] <= value <= INT64[1] else None
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return milvus_string(value)
    return None  # null, objects, nested lists


def filter_expression(filters: dict[str, Any] | None) -> str | None:
    """The JSON filter language (field equals a value, or any of a list; ``id``: document ids) as a Milvus
    expression; ``"false"`` when a filter can match nothing; None for no filter. A field's clause that
    accepts null (the field absent or null, as the folder store's ``record.get(name) == None``) is left out:
    Milvus Lite 2.5 has no expression for a JSON key's absence (it refuses ``is null``, ``exists`` and
    ``not``), so the search checks those on the hits (``null_filters``)."""
    if not filters:
        return None
    clauses = []
    for name, wanted in filters.items():
        target = "doc_id" if name == "id" else f"fields[{milvus_string(name)}]"
        values = wanted if isinstance(wanted, list) else [wanted]
        if name == "id":  # ids are strings: another type matches no document
            options = [f"{target} == {milvus_string(v)}" for v in values if isinstance(v, str)]
        elif None in values:
            continue
        else:
            options = [f"{target} == {milvus_literal(v)}" for v in values if milvus_literal(v) is not None]
        if not options:
            return "false"
        # `in` on a JSON path is not in every engine (Milvus Lite 3.2 refused it): a chain of `or`.
        clauses.append(" or ".join(options))
    return " and ".join(f"({c})" for c in clauses) or None


def null_filters(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """The filters ``filter_expression`` leaves to the search (those accepting null), or None."""
    left = {name: wanted for name, wanted in (filters or {}).items()
            if name != "id" and None in (wanted if isinstance(wanted, list) else [wanted])}
    return left or None


def window_key(doc_id: str, window: int) -> str:
    """A window row's primary key: writes find, replace and delete rows by it, never by a filter."""
    return json.dumps([doc_id, window], ensure_ascii=False)


def keys_expression(keys: list[str]) -> str:
    """``key in [...]``: a primary-key lookup (what ``MilvusClient.get``/``delete(ids=...)`` send, but with
    escaped literals: theirs quote a key without escaping, so an id holding a backslash or quote is missed)."""
    return f"key in [{', '.join(milvus_string(k) for k in keys)}]"


def check_milvus_uri(uri: str, flag: str = "--index") -> None:
    if not is_milvus_uri(uri):
        raise ConfigError(f"{flag} {uri}: expected a Milvus Lite file (*.db) or http(s)://host:port")
    name = Path(uri).name
    if not uri.startswith(("http://", "https://")) and not (LITE_NAME.fullmatch(name) and len(name) < 36):
        raise ConfigError(f"{flag} {uri}: Milvus Lite takes file names of letters, digits, '.', '-' and '_', "
                          f"under 36 characters")


def connect(uri: str, token: str | None = None):
    """A client of ``uri`` (token: ``token``, else ``$FINBERT2_MILVUS_TOKEN``); an engine that cannot be
    reached or opened is a one-line ``ConfigError``."""
    from pymilvus import MilvusClient

    check_milvus_uri(uri)
    try:
        return MilvusClient(uri=uri, token=token or os.environ.get(MILVUS_TOKEN_ENV) or "")
    except Exception as err:  # MilvusException mostly; a dead server may surface as a gRPC error too
        raise ConfigError(f"--index {uri}: {getattr(err, 'message', None) or err}") from None


class MilvusIndex:
    """Search and update the window collection at ``uri``; the interface of ``store.DocumentIndex``."""

    def __init__(self, uri: str, dimension: int, model_config: dict[str, Any], segmenter=None,
                 window_chars: int = 400, window_stride: int = 380, token: str | None = None,
                 collection: str = COLLECTION, client=None, building: bool = False):
        self.location, self.collection = uri, collection
        self.dimension, self.model_config, self.segmenter = dimension, model_config, segmenter
        self.window_chars, self.window_stride = window_chars, window_stride
        self.client = client or connect(uri, token)
        if not building and self.client.has_collection(collection + INCOMPLETE_SUFFIX):
            raise ConfigError(f"--index {uri}: collection '{collection}' is a bulk write cut short; write it again "
                              f"(`finbert2 retrieve index --index {uri}`)")
        if self.client.has_collection(collection):
            self._check_dimension()
        else:
            self._create()
        self.client.load_collection(collection)
        self._counted_at = -math.inf
        self._counts: tuple[int, int] | None = None  # (documents, windows), counted on first use
        self._counts_lock = threading.Lock()
        # The server runs writes in executor threads: one at a time, so that what stored_windows() saw still holds
        # when new documents are inserted and the tails of replaced ones deleted.
        self._write_lock = threading.Lock()

    def seal(self) -> None:
        """Flush the growing segment into a sealed one. Bulk writes (``write_rows``) end with one, so that a
        server indexes and persists the whole bulk; single-document writes do not (each would leave a small
        segment). On Milvus Lite 2.5 a flush takes ~2 ms and searches of the growing segment are about as
        fast (dense at 20k windows: 11 ms before, 9 ms after), and BM25 statistics span every segment."""
        self.client.flush(self.collection)

    # --- schema ----------------------------------------------------------------------------------------
    def _create(self) -> None:
        from pymilvus import DataType, Function, FunctionType

        client = self.client
        config = {**self.model_config, "window_chars": self.window_chars, "window_stride": self.window_stride}
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False,
                                      description=json.dumps(config, ensure_ascii=False))
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_TEXT)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("window", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("fields", DataType.JSON)
        schema.add_field("bm25_text", DataType.VARCHAR, max_length=MAX_TEXT, enable_analyzer=True,
                         analyzer_params={"tokenizer": "standard"})
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                     input_field_names=["bm25_text"], output_field_names=["sparse"]))
        index_params = client.prepare_index_params()
        index_params.add_index("vector", index_type="FLAT", metric_type="IP")
        index_params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                               params={"bm25_k1": BM25_K1, "bm25_b": BM25_B})
        client.create_collection(self.collection, schema=schema, index_params=index_params, consistency_level="Strong")

    def _check_dimension(self) -> None:
        fields = self.client.describe_collection(self.collection)["fields"]
        vector = next((f for f in fields if f["name"] == "vector"), None)
        if vector is None:
            raise ConfigError(f"{self.location}: collection '{self.collection}' is not a finbert2 index")
        dim = int(vector.get("params", {}).get("dim", self.dimension))
        if dim != self.dimension:
            raise ConfigError(f"{self.location}: index of dimension {dim}, the retriever's is {self.dimension}")

    @classmethod
    def existing(cls, uri: str, token: str | None = None, collection: str = COLLECTION, segmenter=None) -> MilvusIndex:
        """The index at ``uri`` as it was built: its dimension, model and window settings read back from the
        collection (``retrieve search``); a missing file or collection is a ``ConfigError``."""
        check_milvus_uri(uri)
        if not uri.startswith(("http://", "https://")) and not Path(uri).exists():
            raise ConfigError(f"--index {uri}: no such Milvus Lite file (build it with `finbert2 retrieve index "
                              f"--index {uri}`)")
        client = connect(uri, token)
        if not client.has_collection(collection):
            raise ConfigError(f"--index {uri}: no collection '{collection}' (build it with `finbert2 retrieve index "
                              f"--index {uri}`)")
        described = client.describe_collection(collection)
        vector = next((f for f in described["fields"] if f["name"] == "vector"), None)
        if vector is None:
            raise ConfigError(f"{uri}: collection '{collection}' is not a finbert2 index")
        config = json.loads(described.get("description") or described.get("properties", {}).get(CONFIG_PROPERTY)
                            or "{}")
        return cls(uri, int(vector["params"]["dim"]), config, segmenter, config.get("window_chars", 400),
                   config.get("window_stride", 380), token, collection, client=client)

    # --- counts (the folder store's ``documents`` and ``windows``) -----------------------------------------
    def _count(self, expression: str) -> int:
        """Rows matching ``expression`` (all rows when empty): ~1 ms on Milvus Lite 2.5 at 20k and at 300k
        windows, with or without a filter."""
        rows = self.client.query(self.collection, filter=expression, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def refresh(self, force: bool = False) -> None:
        """Count documents (rows of window 0) and windows again when ``force`` (after each write) or when the
        counts are older than ``COUNT_SECONDS`` (another worker sharing a server may have written). The engine
        itself needs no reload: searches see every write."""
        if force or self._counts is None or time.monotonic() - self._counted_at > COUNT_SECONDS:
            counts = (self._count("window == 0"), self._count(""))
            with self._counts_lock:
                self._counts, self._counted_at = counts, time.monotonic()

    @property
    def documents(self) -> int:
        self.refresh()
        return self._counts[0]

    @property
    def windows(self) -> int:
        self.refresh()
        return self._counts[1]

    def window_texts(self, record: dict[str, Any]) -> list[str]:
        return split_windows(format_document(record), self.window_chars, self.window_stride)

    # --- writing ---------------------------------------------------------------------------------------
    def stored_windows(self, ids: list[str]) -> dict[str, int]:
        """How many windows each document of ``ids`` has in the index (absent ones left out), read by primary
        key, ``PROBE_WINDOWS`` keys a document at a time: a key lookup takes ~2 ms at any size, where a filter
        on ``doc_id`` reads every row (Milvus Lite 2.5: 14 ms at 300k windows, 2 ms at 20k)."""
        stored: dict[str, int] = {}
        # an id too long for a key was never written (``rows`` refuses it)
        pending = [i for i in dict.fromkeys(ids) if len(window_key(i, 0).encode("utf-8")) <= MAX_TEXT]
        start = 0
        while pending:
            keys = [window_key(i, n) for i in pending for n in range(start, start + PROBE_WINDOWS)]
            last: dict[str, int] = {}
            for row in self.client.query(self.collection, filter=keys_expression(keys), output_fields=["doc_id", "window"]):
                last[row["doc_id"]] = max(last.get(row["doc_id"], -1), int(row["window"]))
            stored.update({i: n + 1 for i, n in last.items()})
            # windows are numbered from 0 without gaps: a document with all of these may have more
            pending = [i for i in pending if last.get(i) == start + PROBE_WINDOWS - 1]
            start += PROBE_WINDOWS
        return stored

    def rows(self, record: dict[str, Any], vectors: np.ndarray) -> list[dict[str, Any]]:
        doc_id = str(record["id"])
        fields = {k: v for k, v in record.items() if k not in TEXT_FIELDS}
        # What the engine would refuse (a VARCHAR or JSON value over 64 KiB) is the client's error, not a 500.
        if len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
            raise ApiError(422, f"document id of {len(doc_id.encode('utf-8'))} bytes: a Milvus index takes ids of "
                                f"at most {MAX_ID_BYTES}", "validation", "documents")
        if len(json.dumps(fields, ensure_ascii=False).encode("utf-8")) > MAX_ID_BYTES:
            raise ApiError(422, f"document {doc_id[:80]}: its fields other than text take over {MAX_ID_BYTES} bytes "
                                f"as JSON (a Milvus index's limit)", "validation", "documents")
        texts = self.window_texts(record)
        if len(texts) != len(vectors):
            raise ValueError(f"document {doc_id}: {len(texts)} windows but {len(vectors)} vectors")
        return [{"key": window_key(doc_id, n), "doc_id": doc_id, "window": n, "text": text, "fields": fields,
                 "bm25_text": bm25_text(text, self.segmenter), "vector": np.asarray(vector, np.float32).tolist()}
                for n, (text, vector) in enumerate(zip(texts, vectors))]

    def stored_rows(self, batch_size: int = 1000) -> Iterable[dict[str, Any]]:
        """Every window row of the collection as ``rows()`` makes them (the engine's BM25 vector left out), in
        key order, ``batch_size`` at a time: each query asks for the keys after the last one (pymilvus's
        ``query_iterator`` hands back its first page over and over from Milvus Lite 2.5)."""
        names = ["key", *OUTPUT_FIELDS, "bm25_text", "vector"]
        last = ""
        while batch := self.client.query(self.collection, filter=f"key > {milvus_string(last)}",
                                         output_fields=names, limit=batch_size):
            keys = [row["key"] for row in batch]
            if keys != sorted(keys):
                raise RuntimeError(f"{self.location}: the engine hands back rows out of key order; cannot page them")
            yield from ({name: row[name] for name in names} for row in batch)
            last = keys[-1]

    def write_rows(self, rows: Iterable[dict[str, Any]], total: int, batch_size: int = 1000, desc: str = "write",
                   show_progress: bool = False) -> int:
        """Write window ``rows`` (``rows()``'s shape, keys unique) into a fresh collection (``build_collection``'s)
        ``batch_size`` at a time, with a progress bar over ``total`` windows; returns how many were written. The
        bulk path: no per-document bookkeeping. Inserted on Milvus Lite (its upsert reads every row: the load
        would grow with the square of its size), upserted on a server."""
        from tqdm.auto import tqdm

        write = self.client.insert if self.embedded else self.client.upsert
        written, batch = 0, []
        with tqdm(total=total, desc=desc, unit="window", disable=not show_progress) as bar:
            for row in rows:
                batch.append(row)
                if len(batch) == batch_size:
                    write(self.collection, batch)
                    written += len(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                write(self.collection, batch)
                written += len(batch)
                bar.update(len(batch))
        self.seal()
        self.refresh(force=True)
        return written

    def add(self, records: list[dict[str, Any]], window_vectors: list[np.ndarray]) -> int:
        """Add ``records`` (one vector per window each), replacing any with the same id; returns how many
        were replaced. Held by the engine when it returns."""
        ids = [str(r["id"]) for r in records]
        rows = [row for record, vectors in zip(records, window_vectors) for row in self.rows(record, vectors)]
        with self._write_lock:
            stored = self.stored_windows(ids)
            # Milvus Lite 2.5's upsert reads every row (one window: 300 ms at 100k windows, an insert 3 ms). The
            # embedded index, its file's only writer (and writes one at a time), inserts the windows of documents
            # it does not hold; a replaced document is upserted (never a moment without it). A server's other
            # workers may be adding the same id: there every write upserts.
            new = [row for row in rows if row["doc_id"] not in stored] if self.embedded else []
            if new:
                self.client.insert(self.collection, new)
            if len(new) < len(rows):
                self.client.upsert(self.collection, [row for row in rows if row["doc_id"] in stored]
                                   if self.embedded else rows)
            # Windows past a new version's end (a replaced document that got shorter), deleted by key.
            tails = [window_key(i, n) for i, v in zip(ids, window_vectors) for n in range(len(v), stored.get(i, 0))]
            if tails:
                self.client.delete(self.collection, filter=keys_expression(tails))
            self.refresh(force=True)
        return len(stored)

    def delete(self, ids: list[str]) -> list[str]:
        """Delete documents by id; returns the ids that were not there."""
        ids = list(dict.fromkeys(ids))
        with self._write_lock:
            present = self.stored_windows(ids)
            if present:
                self.client.delete(self.collection, filter=keys_expression(
                    [window_key(i, n) for i, count in present.items() for n in range(count)]))
                self.refresh(force=True)
        return [i for i in ids if i not in present]

    @property
    def embedded(self) -> bool:
        """Milvus Lite opened by this process (a ``*.db`` file), as opposed to a server."""
        return not self.location.startswith(("http://", "https://"))

    # --- searching -------------------------------------------------------------------------------------
    def search(self, query_vector: np.ndarray | None, query_text: str, top_k: int, mode: str,
               filters: dict[str, Any] | None, rrf_k: int) -> list[dict[str, Any]]:
        """Hits as ``DocumentIndex.search`` gives them (document-level, best window, RRF for hybrid)."""
        expression = filter_expression(filters)
        if expression == "false":
            return []
        checked = null_filters(filters)
        depth = max(top_k, 100)  # documents each retriever hands to the fusion
        dense = self._grouped(query_vector.astype(np.float32).tolist(), "vector", "IP", depth, expression,
                              checked) if mode != "bm25" else {}
        query_words = bm25_text(query_text, self.segmenter)
        bm25 = self._grouped(query_words, "sparse", "BM25", depth, expression, checked) \
            if mode != "dense" and query_words else {}
        return document_hits(dense, bm25, mode, top_k, rrf_k, depth)

    def _grouped(self, data, field: str, metric: str, depth: int, expression: str | None,
                 checked: dict[str, Any] | None = None) -> dict:
        """``{document id: (best window score, window)}`` of the ``depth`` best documents, best first (ties:
        the first window, then the smaller id, as the folder store breaks them).

        The engine ranks windows; documents are grouped here. Milvus's own ``group_by_field`` hands back one
        window per document in Milvus Lite 2.5 (``group_size`` ignored), whichever of tied windows it meets
        first, and cuts documents tied at the limit in its own order. So the search asks for windows, and
        a document counts only when its best score is above the lowest score handed back (every window
        above that is in the answer): deeper, four times as many windows, until ``depth`` documents count
        or nothing is left. The engine filters inside the search with BM25 statistics (IDF, average
        length) over the whole collection, as the folder store's BM25 over the corpus; ``checked``
        (``null_filters``) is checked here on each window's fields."""
        limit = min(2 * depth, MAX_LIMIT)
        while True:
            hits = self.client.search(self.collection, data=[data], anns_field=field, limit=limit,
                                      filter=expression or "", output_fields=OUTPUT_FIELDS,
                                      search_params={"metric_type": metric})[0]
            best: dict[str, tuple[float, dict]] = {}
            for hit in hits:
                entity = hit["entity"]
                score = self._score(hit, metric)
                if metric == "BM25" and score == 0:
                    continue  # no query word in the window: not retrieved (as bm25s)
                if checked and not matches({"id": entity["doc_id"], "record": entity["fields"] or {}}, checked):
                    continue
                window = {"encoded_text": entity["text"], "window": int(entity["window"]),
                          "fields": entity["fields"] or {}}
                seen = best.get(entity["doc_id"])
                if seen is None or (-score, window["window"]) < (-seen[0], seen[1]["window"]):
                    best[entity["doc_id"]] = (score, window)
            complete = len(hits) < limit or limit >= MAX_LIMIT
            floor = -math.inf if complete else self._score(hits[-1], metric)
            ranked = sorted(((d, v) for d, v in best.items() if v[0] > floor),
                            key=lambda item: (-item[1][0], item[0]))
            if complete or len(ranked) >= depth:
                return dict(ranked[:depth])
            limit = min(4 * limit, MAX_LIMIT)

    @staticmethod
    def _score(hit: dict, metric: str) -> float:
        """A hit's score on the folder store's scale: Lucene's BM25 (Milvus's) carries a (k1 + 1) factor that
        bm25s leaves out (the same ranking)."""
        score = float(hit["distance"])
        return score / (BM25_K1 + 1) if metric == "BM25" else score


def open_index(location: str, dimension: int, model_config: dict[str, Any], segmenter=None,
               window_chars: int = 400, window_stride: int = 380, token: str | None = None,
               collection: str = COLLECTION):
    """The store ``--index`` names: Milvus for a ``*.db`` file or an ``http(s)://`` server, else a folder."""
    from finbert2.serve.store import DocumentIndex

    if is_milvus_uri(str(location)):
        return MilvusIndex(str(location), dimension, model_config, segmenter, window_chars, window_stride, token,
                           collection)
    return DocumentIndex(location, dimension, model_config, segmenter, window_chars, window_stride)


def build_collection(uri: str, dimension: int, model_config: dict[str, Any], fill, token: str | None = None,
                     collection: str = COLLECTION, segmenter=None, window_chars: int = 400, window_stride: int = 380,
                     replace: bool = False) -> MilvusIndex:
    """A whole index written in bulk by ``fill(index)``; an existing ``collection`` is refused before anything
    is written, or with ``replace`` replaced only once ``fill`` returns (a worker serving it sees the new one
    after a restart). No half-written index is ever read under ``collection``:

    - a server fills a fresh collection ``<collection>__building`` and renames it to ``collection``;
    - Milvus Lite 2.5 has no rename: a new index is filled under its own name, a replacement in
      ``<collection>__building`` and then copied under the name, each behind a ``<collection>__incomplete``
      marker that readers refuse.

    A failed build drops what it wrote; a killed one leaves its collections, and the next build drops them."""
    client = connect(uri, token)
    marker, staging = collection + INCOMPLETE_SUFFIX, collection + BUILDING_SUFFIX
    if client.has_collection(marker):  # a build cut short: what is under the name is no index
        for name in (collection, marker):
            if client.has_collection(name):
                client.drop_collection(name)
    if client.has_collection(collection) and not replace:
        raise ConfigError(f"--index {uri}: collection '{collection}' exists; pass --overwrite_index True to replace "
                          f"it (or --index_collection NAME for another)")
    if client.has_collection(staging):
        client.drop_collection(staging)
    renames = uri.startswith(("http://", "https://"))
    in_place = not renames and not client.has_collection(collection)

    def new_index(name: str) -> MilvusIndex:
        return MilvusIndex(uri, dimension, model_config, segmenter, window_chars, window_stride, token, name,
                           client=client, building=True)

    if in_place:
        client.create_collection(marker, dimension=2)
    index = new_index(collection if in_place else staging)
    try:
        fill(index)
    except BaseException:
        with contextlib.suppress(Exception):  # the build's own error is the one to report
            for name in ((collection, marker) if in_place else (staging,)):
                client.drop_collection(name)
        raise
    if renames:
        if client.has_collection(collection):
            client.drop_collection(collection)
        client.rename_collection(staging, collection)
        client.load_collection(collection)
        index.collection = collection
    elif not in_place:
        client.create_collection(marker, dimension=2)
        client.drop_collection(collection)
        copy, index = index, new_index(collection)
        index.write_rows(copy.stored_rows(), 0)
        client.drop_collection(staging)
    if client.has_collection(marker):
        client.drop_collection(marker)
    index.refresh(force=True)
    return index


def import_folder(folder: str | Path, uri: str, token: str | None = None, collection: str = COLLECTION,
                  batch_size: int = 1000, segmenter=None, show_progress: bool = False,
                  replace: bool = False) -> tuple[int, int]:
    """Copy an index folder (``retrieve index`` or a served folder's current generation) into a new Milvus
    index at ``uri`` (``build_collection``), window by window with its vector (nothing is encoded again);
    returns ``(documents, windows)`` copied. Windows and stored fields are kept as the folder has them."""
    from finbert2.retrieve.index import INDEX_CONFIG, current_index_dir
    from finbert2.serve.store import DocumentIndex

    source = current_index_dir(folder)
    if not (source / INDEX_CONFIG).is_file():
        raise ConfigError(f"--from_folder {folder}: not an index folder (no {INDEX_CONFIG})")
    config = json.loads((source / INDEX_CONFIG).read_text(encoding="utf-8"))
    window_chars, window_stride = config.get("window_chars", 400), config.get("window_stride", 380)
    old = DocumentIndex(folder, int(config["dimension"]), config, segmenter, window_chars, window_stride).state
    rows = ({"key": json.dumps([w["id"], w["window"]], ensure_ascii=False), "doc_id": w["id"], "window": w["window"],
             "text": w["encoded_text"], "fields": {k: v for k, v in w["record"].items() if k not in TEXT_FIELDS},
             "bm25_text": hex_words(tokens), "vector": vector.tolist()}
            for w, tokens, vector in zip(old.windows, old.tokens, old.vectors))
    build_collection(uri, int(config["dimension"]),
                     {k: v for k, v in config.items() if k not in {"documents", "windows", "index_type"}},
                     lambda index: index.write_rows(rows, len(old.windows), batch_size, "import", show_progress),
                     token, collection, segmenter, window_chars, window_stride, replace)
    return len(old.document_ids), len(old.windows)


@dataclass
class ImportArguments:
    """``finbert2 retrieve import`` (or ``retrieve index --from_folder``): an index folder into a Milvus index."""

    from_folder: str = field(metadata={"help": "Index folder (from `retrieve index` or `serve --index FOLDER`)."})
    index: str = field(metadata={"help": "Milvus Lite file (*.db) or Milvus server (http(s)://host:port)."})
    index_token: str | None = field(default=None, metadata={"help": "Token of the Milvus server."})
    index_collection: str = field(default=COLLECTION, metadata={"help": "Collection to write into."})
    user_dict: str | None = field(default=None, metadata={"help": "jieba user dictionary the server uses for BM25."})
    batch_size: int = field(default=1000, metadata={"help": "Windows per insert."})
    overwrite_index: bool = field(default=False, metadata={
        "help": "Replace an existing collection of that name (off: refuse it)."})

    def __post_init__(self):
        check_milvus_uri(self.index)
        if self.batch_size < 1:
            raise ConfigError("--batch_size must be at least 1")


def run_import(args: ImportArguments) -> tuple[int, int]:
    from finbert2.segmentation import new_segmenter

    return import_folder(args.from_folder, args.index, args.index_token, args.index_collection, args.batch_size,
                         new_segmenter(args.user_dict), show_progress=True, replace=args.overwrite_index)
