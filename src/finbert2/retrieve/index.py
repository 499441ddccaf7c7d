"""Build a faiss index over a document collection, or a Milvus index, and search it.

    finbert2 retrieve index --model_name_or_path runs/retriever --corpus docs.jsonl --output_dir runs/index
    finbert2 retrieve search --index_dir runs/index --query 美联储加息对科技股的影响 --top_k 5
    finbert2 retrieve index --model_name_or_path runs/retriever --corpus docs.jsonl --index runs/index.db
    finbert2 retrieve search --index runs/index.db --query 美联储加息对科技股的影响 --mode hybrid

The index folder holds ``index.faiss``, ``docs.jsonl`` (row -> id, the original record and the
encoded text) and ``index_config.json`` (model, query instruction, index type). Documents may be
``{id?, title?, text}`` or upstream's ``{title, company, institution, industry, author, type, content}``,
which are encoded in upstream's labelled layout (see ``format_document``).

``--index URI`` writes a Milvus index instead (``serve.milvus_store``: a Milvus Lite ``*.db`` file or a
Milvus server), the one ``finbert2 serve --index URI`` serves: documents split into windows as the server
splits them, each window encoded, in batches, into a collection that takes the index's name only once
complete (``build_collection``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from finbert2.data import iter_jsonl, iter_lines, write_json, write_jsonl
from finbert2.errors import ConfigError, DataError
from finbert2.retrieve.encoder import DenseEncoder
from finbert2.retrieve.search import build_index, format_document, search_index
from finbert2.precision import command_bf16

logger = logging.getLogger("finbert2.retrieve")

INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.jsonl"
INDEX_CONFIG = "index_config.json"
# Written by `finbert2 serve`, which updates an index in generations: the folder name in use.
CURRENT = "CURRENT"


def current_index_dir(folder: str | Path) -> Path:
    """The folder holding the index files: the generation ``CURRENT`` names, else ``folder`` itself."""
    folder = Path(folder)
    pointer = folder / CURRENT
    if pointer.is_file():
        return folder / pointer.read_text(encoding="utf-8").strip()
    return folder


def read_documents(paths: list[str]) -> list[dict[str, Any]]:
    """Documents with an id (given, or ``<file stem>-<line>``) and the text they are encoded as."""
    docs, seen = [], set()
    for path in map(Path, paths):
        for lineno, obj in iter_jsonl(path):
            body = obj.get("content", obj.get("text"))
            if not isinstance(body, str) or not body.strip():
                raise DataError(path, lineno, "needs a non-empty 'text' (or upstream's 'content') field")
            doc_id = str(obj["id"]) if obj.get("id") is not None else f"{path.stem}-{lineno}"
            if doc_id in seen:
                raise DataError(path, lineno, f"duplicate id '{doc_id}'")
            seen.add(doc_id)
            docs.append({"id": doc_id, "record": obj, "encoded_text": format_document(obj)})
    if not docs:
        raise DataError(Path(paths[0]), None, "no documents")
    return docs


def encoder_config(encoder: DenseEncoder, args) -> dict[str, Any]:
    """What a search needs to encode queries as the index's documents were (kept with the index)."""
    return {"model_name_or_path": args.model_name_or_path, "query_instruction": encoder.query_instruction,
            "passage_instruction": encoder.passage_instruction, "pooling": encoder.pooling,
            "max_length": args.max_length, "bf16": args.precision.bf16}


def encoder_from_config(config: dict[str, Any], batch_size: int) -> DenseEncoder:
    """The encoder an index was built with (``encoder_config`` of a folder or a Milvus collection)."""
    return DenseEncoder.from_pretrained(
        config["model_name_or_path"], query_instruction=config["query_instruction"],
        passage_instruction=config.get("passage_instruction", ""), pooling=config.get("pooling"),
        max_length=config["max_length"], batch_size=batch_size, bf16=config.get("bf16", False))


def run_index(args, run_args) -> dict[str, Any]:
    import faiss

    from finbert2.run import prepare_output_dir, setup_logging, write_metrics, write_run_config

    started = time.perf_counter()
    docs = read_documents(args.corpus)
    encoder = DenseEncoder.from_pretrained(args.model_name_or_path, query_instruction=args.query_instruction,
                                           passage_instruction=args.passage_instruction,
                                           max_length=args.max_length, batch_size=args.batch_size, bf16=command_bf16(args))
    if args.index is not None:
        return index_into_milvus(args, docs, encoder, started)
    output_dir = prepare_output_dir(args.output_dir, overwrite=run_args.overwrite_output_dir, clear=True)
    setup_logging(output_dir)
    write_run_config(output_dir, args, run_args, stage="retrieve index")
    vectors = encoder.encode_passages([d["encoded_text"] for d in docs], show_progress=True)
    index = build_index(vectors, args.index_type, args.nlist, args.nprobe)
    faiss.write_index(index, str(output_dir / INDEX_FILE))
    write_jsonl(output_dir / DOCS_FILE, docs)
    write_json(output_dir / INDEX_CONFIG, {
        **encoder_config(encoder, args), "index_type": args.index_type, "nprobe": getattr(index, "nprobe", None),
        "dimension": encoder.dimension, "documents": len(docs),
    })
    metrics = {"documents": len(docs), "dimension": encoder.dimension, "index_type": args.index_type,
               "index_seconds": time.perf_counter() - started}
    logger.info("indexed %d documents into %s", len(docs), output_dir)
    return write_metrics(output_dir, metrics)


def index_into_milvus(args, docs: list[dict[str, Any]], encoder: DenseEncoder, started: float) -> dict[str, Any]:
    """``run_index`` into the Milvus index ``args.index``: windows encoded and upserted
    ``args.insert_batch_size`` at a time (``MilvusIndex.rows``, ``write_rows``), as one ``build_collection``."""
    from finbert2.segmentation import new_segmenter
    from finbert2.serve.errors import ApiError
    from finbert2.serve.milvus_store import build_collection
    from finbert2.serve.store import split_windows

    records = [{**d["record"], "id": d["id"]} for d in docs]  # the id read_documents gave (or made)
    windows = [split_windows(d["encoded_text"], args.window_chars, args.window_stride) for d in docs]

    def encoded_rows(index):
        """Rows of the next documents holding about ``insert_batch_size`` windows, encoded together."""
        start = 0
        while start < len(records):
            end, size = start, 0
            while end < len(records) and (end == start or size + len(windows[end]) <= args.insert_batch_size):
                size += len(windows[end])
                end += 1
            vectors = encoder.encode_passages([w for ws in windows[start:end] for w in ws])
            offset = 0
            for record, texts in zip(records[start:end], windows[start:end]):
                try:
                    yield from index.rows(record, vectors[offset:offset + len(texts)])
                except ApiError as err:  # what the engine cannot hold, named (the route's 422)
                    raise ConfigError(f"--corpus: {err.message}") from None
                offset += len(texts)
            start = end

    total = sum(map(len, windows))
    index = build_collection(
        args.index, encoder.dimension, encoder_config(encoder, args),
        lambda index: index.write_rows(encoded_rows(index), total, args.insert_batch_size, "index", True),
        args.index_token, args.index_collection, new_segmenter(args.user_dict), args.window_chars,
        args.window_stride, args.overwrite_index)
    metrics = {"documents": index.documents, "windows": index.windows, "dimension": encoder.dimension,
               "index": args.index, "collection": args.index_collection,
               "index_seconds": time.perf_counter() - started}
    logger.info("indexed %d documents (%d windows) into %s, collection %s", metrics["documents"],
                metrics["windows"], args.index, args.index_collection)
    return metrics


class SearchIndex:
    """A loaded index folder: ``search(queries, k)`` -> per query, ``[{rank, score, id, text, record}]``."""

    def __init__(self, index_dir: str | Path, batch_size: int = 64):
        import faiss

        index_dir = current_index_dir(index_dir)
        if not (index_dir / INDEX_FILE).is_file():
            raise ConfigError(f"{index_dir}: no {INDEX_FILE} (build it with `finbert2 retrieve index`)")
        self.config = json.loads((index_dir / INDEX_CONFIG).read_text(encoding="utf-8"))
        self.index = faiss.read_index(str(index_dir / INDEX_FILE))
        if self.config.get("nprobe"):
            self.index.nprobe = self.config["nprobe"]
        self.docs = [obj for _, obj in iter_jsonl(index_dir / DOCS_FILE)]
        self.encoder = encoder_from_config(self.config, batch_size)

    def search(self, queries: list[str], k: int = 10) -> list[list[dict[str, Any]]]:
        scores, rows = search_index(self.index, self.encoder.encode_queries(queries), k)
        results = []
        for q_scores, q_rows in zip(scores, rows):
            hits = [{"rank": rank + 1, "score": float(s), "id": self.docs[r]["id"],
                     "text": self.docs[r]["encoded_text"], "record": self.docs[r]["record"]}
                    for rank, (s, r) in enumerate((s, r) for s, r in zip(q_scores, q_rows) if r >= 0)]
            results.append(hits)
        return results


class MilvusSearchIndex:
    """A Milvus index (``retrieve index --index``, ``serve``) searched as ``SearchIndex`` is: per query,
    ``[{rank, score, id, text, record}]``; hits are documents (their best window's text; ``record``: the
    stored fields, text aside), dense, BM25 or hybrid as ``serve``'s /search, optionally filtered."""

    def __init__(self, uri: str, token: str | None = None, collection: str = "finbert2_windows",
                 batch_size: int = 64, mode: str = "dense", filters: dict[str, Any] | None = None, rrf_k: int = 60,
                 user_dict: str | None = None):
        from finbert2.segmentation import new_segmenter
        from finbert2.serve.milvus_store import MilvusIndex

        self.store = MilvusIndex.existing(uri, token, collection, new_segmenter(user_dict))
        self.mode, self.filters, self.rrf_k = mode, filters, rrf_k
        self.encoder = None
        if mode != "bm25":  # BM25 alone encodes nothing
            if not self.store.model_config.get("model_name_or_path"):
                raise ConfigError(f"--index {uri}: collection '{collection}' records no model; rebuild it with "
                                  "`finbert2 retrieve index --index` (or search it with --mode bm25)")
            self.encoder = encoder_from_config(self.store.model_config, batch_size)

    def search(self, queries: list[str], k: int = 10) -> list[list[dict[str, Any]]]:
        vectors = self.encoder.encode_queries(queries) if self.encoder else [None] * len(queries)
        return [[{"rank": rank, "score": hit["score"], "id": hit["id"], "text": hit["text"], "record": hit["fields"]}
                 for rank, hit in enumerate(self.store.search(vector, query, k, self.mode, self.filters, self.rrf_k),
                                            start=1)]
                for query, vector in zip(queries, vectors)]


def open_search_index(args) -> SearchIndex | MilvusSearchIndex:
    """The index ``retrieve search`` names: a Milvus URI, else a folder."""
    if args.milvus:
        return MilvusSearchIndex(args.index, args.index_token, args.index_collection, args.batch_size, args.mode,
                                 args.filters, args.rrf_k, args.user_dict)
    return SearchIndex(args.index_dir or args.index, args.batch_size)


def run_search(args) -> list[dict[str, Any]]:
    queries: list[tuple[str, str]] = [(f"q{i}", q) for i, q in enumerate(args.query or [])]
    if args.queries_file:
        path = Path(args.queries_file)
        if path.suffix.lower() == ".txt":
            queries += [(f"{path.stem}-{n}", line.strip()) for n, line in iter_lines(path) if line.strip()]
        else:
            for lineno, obj in iter_jsonl(path):
                text = obj.get("text", obj.get("query"))
                if not isinstance(text, str) or not text.strip():
                    raise DataError(path, lineno, "needs a non-empty 'text' (or 'query') field")
                queries.append((str(obj.get("id", f"{path.stem}-{lineno}")), text))
    index = open_search_index(args)
    hits = index.search([q for _, q in queries], args.top_k)
    rows = [{"query_id": qid, "query": q, "results": h} for (qid, q), h in zip(queries, hits)]
    if args.output_file:
        write_jsonl(args.output_file, rows)
    else:
        for row in rows:
            print(f"【查询】{row['query']}")
            for hit in row["results"]:
                first_line = hit["text"].replace("\n", " | ")[:80]
                print(f"  {hit['rank']:>3}  {hit['score']:.4f}  {hit['id']}  {first_line}")
        sys.stdout.flush()
    return rows
