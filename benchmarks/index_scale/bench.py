"""One-document write and search latency of the server's two index stores as the index grows.

    python benchmarks/index_scale/bench.py --store folder --windows 10000
    python benchmarks/index_scale/bench.py --store milvus --windows 100000

One store and one size per process (so peak memory is the store's). Both get the same documents:
one window each, 60 jieba words drawn from the demo corpus's vocabulary (seeded), random unit vectors
of 384 dimensions (e5-small's). Loaded in bulk (not timed against the goal; Milvus: `retrieve index`'s
path, batched inserts ending in one flush), then timed: a one-document write through the service's path
(median of 5; new documents, then documents already there), and 20 searches each of dense, BM25,
hybrid and filtered hybrid (p50, p95).
Prints one JSON line; RESULTS.md collects them. Memory: this process's peak RSS, and for Milvus Lite
also its engine's (a child process, `milvus_lite/lib/milvus`), read before the process exits.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from finbert2.retrieve.search import jieba_tokens  # noqa: E402
from finbert2.serve.milvus_store import MilvusIndex  # noqa: E402
from finbert2.serve.store import DocumentIndex  # noqa: E402

DIM = 384
SOURCES = ["新华社", "公司公告", "路透", "研报"]


def vocabulary() -> list[str]:
    words: dict[str, None] = {}
    for line in common.DEMO_CORPUS.read_text(encoding="utf-8").splitlines()[:1500]:
        words.update(dict.fromkeys(jieba_tokens(json.loads(line)["text"])))
    return list(words)


def documents(rng, words: list[str], start: int, n: int) -> list[dict]:
    picks = rng.integers(0, len(words), size=(n, 60))
    return [{"id": f"d{start + i}", "text": "".join(words[j] for j in row), "source": SOURCES[(start + i) % 4]}
            for i, row in enumerate(picks)]


def unit(rng, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def child_peak_rss_mb() -> int:
    """Peak RSS (VmHWM) of this process's children: the Milvus Lite engine."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        for pid in open(f"/proc/self/task/{task}/children").read().split():
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return round(total / 1024)


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=["folder", "milvus"], required=True)
    parser.add_argument("--windows", type=int, required=True)
    parser.add_argument("--batch", type=int, default=5000, help="documents generated at a time")
    parser.add_argument("--insert_batch", type=int, default=1000,
                        help="Milvus: windows per insert (`retrieve index --insert_batch_size`'s default; Milvus "
                             "Lite 2.5 slowed ~18x at 5000 windows of 384-d vectors per call)")
    args = parser.parse_args()
    print("\n".join(common.header_lines()), file=sys.stderr)
    rng = np.random.default_rng(0)
    words = vocabulary()
    workdir = Path(tempfile.mkdtemp(prefix="index-scale-"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = (DocumentIndex(workdir / "folder", DIM, {}) if args.store == "folder"
             else MilvusIndex(str(workdir / "index.db"), DIM, {}))
    t0 = time.perf_counter()
    if args.store == "folder":  # the folder store writes a generation per call: one call for the bulk
        docs = documents(rng, words, 0, args.windows)
        store.add(docs, [v[None] for v in unit(rng, args.windows)])
    else:  # `retrieve index --index`'s path: batched inserts (upserts on a server), then one flush
        def rows():
            for start in range(0, args.windows, args.batch):
                n = min(args.batch, args.windows - start)
                for record, vector in zip(documents(rng, words, start, n), unit(rng, n)):
                    yield from store.rows(record, vector[None])
        store.write_rows(rows(), args.windows, args.insert_batch)
    load_s = time.perf_counter() - t0
    writes = []
    for i in range(5):
        doc = documents(rng, words, args.windows + i, 1)
        t0 = time.perf_counter()
        store.add(doc, [unit(rng, 1)])
        writes.append(time.perf_counter() - t0)
    replaces = []  # the same write naming a document already there (its windows replaced)
    for i in range(5):
        doc = documents(rng, words, 7 * i + 3, 1)
        t0 = time.perf_counter()
        store.add(doc, [unit(rng, 1)])
        replaces.append(time.perf_counter() - t0)
    queries = [" ".join(words[j] for j in rng.integers(0, len(words), size=4)) for _ in range(20)]
    latency = {}
    for name, mode, filters in [("dense", "dense", None), ("bm25", "bm25", None), ("hybrid", "hybrid", None),
                                ("filtered_hybrid", "hybrid", {"source": ["公司公告", "研报"]})]:
        times = []
        for query in queries:
            q = unit(rng, 1)[0]
            t0 = time.perf_counter()
            hits = store.search(q, query, 10, mode, filters, 60)
            times.append(time.perf_counter() - t0)
            assert hits, (name, query)
        latency[name] = {"p50_ms": round(percentile(times, 50), 1), "p95_ms": round(percentile(times, 95), 1)}
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine = {"milvus_lite": version("milvus-lite"), "pymilvus": version("pymilvus"),
              "engine_peak_rss_mb": child_peak_rss_mb()} if args.store == "milvus" else {}
    print(json.dumps({"store": args.store, "windows": store.windows, "bulk_load_s": round(load_s, 1),
                      "one_document_write_s": round(float(np.median(writes)), 4),
                      "one_document_replace_s": round(float(np.median(replaces)), 4), **latency,
                      "peak_rss_mb": round(rss_after / 1024), "store_rss_mb": round((rss_after - rss_before) / 1024),
                      **engine}))


if __name__ == "__main__":
    main()
