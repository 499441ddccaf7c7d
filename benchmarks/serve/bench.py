"""``finbert2 serve`` under load, and what each ``--dtype`` costs in accuracy, against the models called directly.

    python benchmarks/serve/bench.py --output benchmarks/serve/RESULTS.md   # on an idle machine

For each dtype (fp32, bf16, int8):

- accuracy against fp32, through the server's own model loading (``finbert2.serve.models``): the
  cosine of embeddings of the same texts, nDCG@10 on a Fin-Eva split (every test query against its
  contexts plus distractors), and the label agreement of a classifier;
- a real server process on loopback: ``--clients`` threads each send ``--requests`` ``/embed``
  requests of 1-8 texts; latency p50/p99, requests/s and inputs/s, and the ratio of inputs/s to
  ``DenseEncoder.encode`` of the same texts in the same process with the same dtype (the model
  called directly, batch 32, every text sorted by length at once), and to the model called directly on
  the batches a server could at best form at that concurrency (each ``--clients`` requests together, cut
  as the batcher cuts): what is left between those two is serving overhead, not batching.

Models: ``--retriever`` (default: multilingual-e5-small, converted offline and vocab-pruned, as the
test suite uses it) and a classifier built from it (its weights plus a seeded random 3-label head:
agreement measures numeric drift only, not accuracy). Bounded: a few hundred requests per dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # ServerProcess: the tests' loopback server runner

from serve_support import ServerProcess

DTYPES = ("fp32", "bf16", "int8")


def cpu_summary() -> dict:
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("avx", "amx", "fma")) or f.endswith("vnni")]
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {"model": model, "cores": torch.get_num_threads(), "flags": " ".join(wanted), "loadavg": " ".join(load),
            "python": platform.python_version(), "torch": torch.__version__}


def default_retriever() -> Path:
    from finbert2.pretrained import multilingual_e5_small

    return multilingual_e5_small(prune_vocab=True, corpus=[str(REPO / "data" / "demo" / "corpus.jsonl")])


def build_classifier(retriever: Path, out: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finbert2.classify.inference import CONFIG_KEY

    torch.manual_seed(0)
    labels = ["消极", "中性", "积极"]
    model = AutoModelForSequenceClassification.from_pretrained(
        retriever, num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    setattr(model.config, CONFIG_KEY, {"long_text": {"max_length": 256, "truncation": "head"}})
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(retriever).save_pretrained(out)
    return out


def fin_eva_split(work: Path, distractors: int):
    """Fin-Eva's test queries, their contexts and ``distractors`` other contexts (a bounded corpus)."""
    from finbert2.converters.cli import main as convert
    from finbert2.data import read_retrieval_eval

    data_dir = work / "fin-eva"
    if not (data_dir / "eval" / "corpus.jsonl").is_file():
        assert convert(["fin-eva", "--input_dir", str(REPO.parent / "shared" / "data" / "fin-eva"),
                        "--output_dir", str(data_dir)]) == 0
    data = read_retrieval_eval(data_dir / "eval", "test")
    relevant = {d for docs in data.qrels.values() for d in docs}
    others = [d for d in data.corpus if d not in relevant][:distractors]
    data.corpus = {d: data.corpus[d] for d in [*relevant, *others]}
    return data


def accuracy(retriever: Path, classifier: Path, dtype: str, data, texts: list[str], reference: dict | None) -> dict:
    from finbert2.retrieve.evaluate import dense_evaluation
    from finbert2.serve.models import Embedder, Labeler

    embedder = Embedder(str(retriever), dtype, max_length=256)
    labeler = Labeler(str(classifier), dtype)
    t0 = time.perf_counter()
    vectors = embedder.encoder.encode_passages(texts)
    ndcg = dense_evaluation(embedder.encoder, data)[0]["ndcg_at_10"]
    labels = labeler.classifier.predict(texts).labels()
    result = {"dtype": dtype, "ndcg_at_10": ndcg, "vectors": vectors, "labels": labels,
              "accuracy_seconds": time.perf_counter() - t0}
    if reference is not None:
        cosine = np.sum(vectors * reference["vectors"], axis=1)
        result.update(cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()),
                      label_agreement=float(np.mean([a == b for a, b in zip(labels, reference["labels"])])))
    else:
        result.update(cosine_mean=1.0, cosine_min=1.0, label_agreement=1.0)
    return result


def direct_inputs_per_second(retriever: Path, dtype: str, requests: list[list[str]], clients: int,
                             rounds: int = 3) -> tuple[float, float]:
    """Inputs/s of the model called directly (medians of ``rounds``): ``DenseEncoder.encode`` of every text at
    once (sorted by length over all of them, batch 32), and the forward passes a server could at best run at
    ``clients`` concurrent requests (each group of ``clients`` requests cut as the server's batcher cuts)."""
    from finbert2.retrieve.encoder import token_budget_batches
    from finbert2.serve.args import ServeArguments
    from finbert2.serve.models import Embedder

    embedder = Embedder(str(retriever), dtype, max_length=256)
    encoder, defaults = embedder.encoder, ServeArguments(retriever=str(retriever))
    texts = [t for r in requests for t in r]
    encoder.encode(texts[:32], batch_size=32)  # warm-up
    groups = [[row for r in requests[i:i + clients] for row in embedder.tokenize(r, truncate=True).rows]
              for i in range(0, len(requests), clients)]

    def grouped() -> None:
        for rows in groups:
            for batch in token_budget_batches(list(map(len, rows)), defaults.max_batch_tokens,
                                              min_fill=defaults.min_batch_fill):
                embedder.forward([rows[i] for i in batch])

    rates = {}
    for name, call in (("all", lambda: encoder.encode(texts, batch_size=32)), ("grouped", grouped)):
        seconds = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - t0)
        rates[name] = len(texts) / statistics.median(seconds)
    return rates["all"], rates["grouped"]


def load(url: str, requests: list[list[str]], clients: int) -> dict:
    shards = [requests[i::clients] for i in range(clients)]

    def run(shard: list[list[str]]) -> list[float]:
        latencies = []
        with httpx.Client(base_url=url, timeout=300) as client:
            for inputs in shard:
                t0 = time.perf_counter()
                response = client.post("/embed", json={"inputs": inputs, "truncate": True})
                latencies.append(time.perf_counter() - t0)
                assert response.status_code == 200, response.text
        return latencies

    httpx.post(f"{url}/embed", json={"inputs": requests[0]}, timeout=300)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for shard in pool.map(run, shards) for x in shard]
    seconds = time.perf_counter() - t0
    quantiles = statistics.quantiles(latencies, n=100)
    return {"requests": len(requests), "inputs": sum(map(len, requests)), "seconds": seconds,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * quantiles[98],
            "requests_per_second": len(requests) / seconds,
            "inputs_per_second": sum(map(len, requests)) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retriever", type=Path, default=None)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=30, help="per client")
    parser.add_argument("--distractors", type=int, default=300, help="Fin-Eva contexts beside the relevant ones")
    parser.add_argument("--output", type=Path, default=None, help="markdown results (also printed)")
    args = parser.parse_args()

    retriever = args.retriever or default_retriever()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="finbert2-serve-bench-") as tmp:
        work = Path(tmp)
        classifier = build_classifier(retriever, work / "classifier")
        data = fin_eva_split(Path(tempfile.gettempdir()) / "finbert2-serve-bench-data", args.distractors)
        queries = list(data.queries.values())
        texts = queries[:200]
        requests = [rng.sample(queries, rng.randint(1, 8)) for _ in range(args.clients * args.requests)]
        rows, reference = [], None
        for dtype in args.dtypes:
            measured = accuracy(retriever, classifier, dtype, data, texts, reference)
            reference = reference or measured
            # the tests' runner gives a server one thread; here it gets the direct call's
            server = ServerProcess("--retriever", retriever, "--dtype", dtype, "--max_length", "256",
                                   env={"OMP_NUM_THREADS": str(torch.get_num_threads())})
            try:  # a contended machine may take minutes to load the model
                served = load(server.wait_ready(timeout=1800).url, requests, args.clients)
            finally:
                server.stop()
            direct, grouped = direct_inputs_per_second(retriever, dtype, requests, args.clients)
            row = {k: v for k, v in measured.items() if k not in ("vectors", "labels")}
            row.update(served, direct_inputs_per_second=direct, served_over_direct=served["inputs_per_second"] / direct,
                       grouped_direct_inputs_per_second=grouped,
                       served_over_grouped=served["inputs_per_second"] / grouped)
            rows.append(row)
            print(json.dumps(row), flush=True)
            report = render(rows, cpu_summary(), retriever, args, len(data.queries), len(data.corpus))
            if args.output:  # after every dtype: a run cut short keeps what it measured
                args.output.write_text(report, encoding="utf-8")
    print(report)


def render(rows: list[dict], cpu: dict, retriever: Path, args, n_queries: int, n_docs: int) -> str:
    lines = [
        "# `finbert2 serve` benchmark", "",
        (f"Command (repo root): `{'OMP_NUM_THREADS=' + os.environ['OMP_NUM_THREADS'] + ' ' if 'OMP_NUM_THREADS' in os.environ else ''}"
        f"{'nice -n ' + str(os.nice(0)) + ' ' if os.nice(0) else ''}python "
        f"benchmarks/serve/bench.py {' '.join(sys.argv[1:])}` (clients {args.clients}, {args.requests} requests "
        "each, 1-8 Fin-Eva questions per `/embed` request)."), "",
        f"- model: multilingual-e5-small, vocab-pruned (`{retriever.name}`), max length 256",
        f"- CPU: {cpu['model']}, {cpu['cores']} torch threads; flags: {cpu['flags']}",
        (f"- load average when the report was written: {cpu['loadavg']}"
        + (" (above the core count: a contended machine, numbers are lower bounds)"
           if float(cpu['loadavg'].split()[0]) > (os.cpu_count() or 1) else "")),
        f"- torch {cpu['torch']}, Python {cpu['python']}",
        (f"- accuracy: nDCG@10 on Fin-Eva test ({n_queries} queries, {n_docs} contexts: every relevant one and "
        f"{args.distractors} distractors); cosine to fp32 over 200 questions; label agreement with fp32 of a "
        "classifier (e5 weights + seeded random head) over the same 200"), "",
        ("| dtype | p50 ms | p99 ms | requests/s | inputs/s served | inputs/s direct | served / direct | "
        f"inputs/s direct, {args.clients} requests a cut | served / that | "
        "cosine to fp32 (mean / min) | nDCG@10 | label agreement |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['requests_per_second']:.1f} | "
                     f"{r['inputs_per_second']:.1f} | {r['direct_inputs_per_second']:.1f} | "
                     f"{r['served_over_direct']:.2f} | {r['grouped_direct_inputs_per_second']:.1f} | "
                     f"{r['served_over_grouped']:.2f} | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | "
                     f"{r['ndcg_at_10']:.4f} | {r['label_agreement']:.3f} |")
    lines += ["", "Raw records:", "", "```json", *[json.dumps(r) for r in rows], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
