"""Our exported backends against sentence-transformers torch fp32 and its own ONNX / OpenVINO backends.

    sh benchmarks/encode_throughput/peers_env.sh VENV_ROOT      # once: the peers' own environments
    PYTHONPATH=src python benchmarks/encode_throughput/backends.py --rounds 3 \\
        --passages_file ../shared/data/cfbenchmark-basic/data/sentiment.jsonl --text_field input \\
        --eval_data FIN_EVA_EVAL_FOLDER --peer_venvs VENV_ROOT --output benchmarks/encode_throughput/e5-small-backends.json

``--size`` e5-small (the default; vocab pruned as in ``bench.py``) or a scratch size such as base (a seeded
random BERT-base with [CLS] pooling: speed and agreement only, its nDCG means nothing) is exported by ``finbert2 export`` to ONNX fp32 and int8-dynamic
and OpenVINO fp32 and int8-static (calibrated on 100 demo corpus texts), the OpenVINO ones also with
``--inference_precision bf16`` where the CPU has native bf16. Each round times, in this
order, ``SentenceTransformer.encode`` (torch fp32, the reference), our ``DenseEncoder`` on the torch folder
(fp32, and bf16 autocast where the CPU has native bf16) and on each export, then each peer environment
(``peers.py``: sentence-transformers torch fp32 again as that process's reference, then its ONNX fp32 and
int8-dynamic, or OpenVINO fp32 and int8-static, exported by sentence-transformers from the same folder and
calibrated on the same texts). Same passages (cut at 512 tokens), the same short queries, batch 32, the
folder's prompts. Reported per row: the median passages/s and queries/s over the rounds, the median of
each round's ratio to the sentence-transformers torch fp32 of the same process, the median single-query
latency (batch of one), the min / mean cosine of its passage vectors to our torch fp32 vectors, and with
``--eval_data`` our rows' nDCG@10 on that retrieval folder (the accuracy gate: drop <= 0.005).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (SIZE_HELP, SIZES, demo_documents, demo_passages, model_folder, print_header,  # noqa: E402
                    read_jsonl_texts, size_description, work_dir, write_record)

REFERENCE = "sentence-transformers torch fp32"
PEERS = ("onnx", "openvino")
# (row, --format, --quantize, --inference_precision); the bf16 rows only where the CPU has native bf16
EXPORTS = (("onnx fp32", "onnx", "none", "f32"), ("onnx int8-dynamic", "onnx", "int8-dynamic", "f32"),
           ("openvino fp32", "openvino", "none", "f32"), ("openvino int8-static", "openvino", "int8-static", "f32"),
           ("openvino bf16", "openvino", "none", "bf16"), ("openvino int8-static bf16", "openvino", "int8-static", "bf16"))


def texts_for(args) -> tuple[list[str], list[str]]:
    """(passages, queries): the passages file's first N texts (default the demo pool), the retrieval folder's
    queries (default the demo questions)."""
    if args.passages_file:
        texts = [t for t in read_jsonl_texts(args.passages_file, args.text_field) if t.strip()]
        passages = [texts[i % len(texts)] for i in range(args.passages)]
    else:
        passages = demo_passages(args.passages)
    from finbert2.data import read_retrieval_eval

    folder = args.eval_data or Path(__file__).resolve().parents[2] / "data" / "demo" / "retrieval" / "eval"
    queries = list(read_retrieval_eval(folder).queries.values())
    return passages, [queries[i % len(queries)] for i in range(args.queries)]


def time_encoder(encode_passages, encode_queries, passages, queries, single_queries: int) -> dict:
    start = time.perf_counter()
    vectors = encode_passages(passages)
    passages_per_second = len(passages) / (time.perf_counter() - start)
    start = time.perf_counter()
    encode_queries(queries)
    queries_per_second = len(queries) / (time.perf_counter() - start)
    single = []
    for query in queries[:single_queries]:
        start = time.perf_counter()
        encode_queries([query])
        single.append((time.perf_counter() - start) * 1000)
    return {"passages_per_second": passages_per_second, "queries_per_second": queries_per_second,
            "single_query_ms_p50": statistics.median(single), "vectors": vectors}


def ndcg_at_10(encoders: dict, eval_data) -> dict:
    """nDCG@10 of each encoder on a retrieval folder (empty without one)."""
    if not eval_data:
        return {}
    from finbert2.data import read_retrieval_eval
    from finbert2.retrieve.evaluate import dense_evaluation

    data = read_retrieval_eval(eval_data)
    quality = {}
    for name, encoder in encoders.items():
        quality[name] = dense_evaluation(encoder, data)[0]["ndcg_at_10"]
        print(f"{name}: nDCG@10 {quality[name]:.4f}", flush=True)
    return quality


def round_summary(per_round: list[dict], refs: list[dict], reference: np.ndarray, ratio: str) -> dict:
    """Medians over the rounds (passages/s, queries/s, each round's ratio to ``refs`` named ``ratio`` and
    ``queries_<ratio>``, single-query ms) and the last round's min / mean cosine to ``reference``."""
    vectors = per_round[-1]["vectors"]
    cos = (vectors * reference).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
    return {"passages_per_second": statistics.median(r["passages_per_second"] for r in per_round),
            ratio: statistics.median(r["passages_per_second"] / f["passages_per_second"] for r, f in zip(per_round, refs)),
            "queries_per_second": statistics.median(r["queries_per_second"] for r in per_round),
            f"queries_{ratio}": statistics.median(r["queries_per_second"] / f["queries_per_second"]
                                                  for r, f in zip(per_round, refs)),
            "single_query_ms_p50": statistics.median(r["single_query_ms_p50"] for r in per_round),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def run_peer(python: Path, backend: str, base: list[str], output: Path) -> list[dict]:
    """One peers.py round; its rows with their vectors."""
    subprocess.run([str(python), *base, "--output", str(output)], check=True)
    record = json.loads(output.read_text(encoding="utf-8"))
    vectors = np.load(output.with_suffix(".npz"))
    return [row | {"vectors": vectors[f"v{i}"], "process": backend} for i, row in enumerate(record["results"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--passages_file", type=Path, default=None, help="JSONL of passages (default: the demo pool)")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--single_queries", type=int, default=50, help="queries timed one at a time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--eval_data", default=None, help="a retrieval folder: nDCG@10 of each of our rows")
    parser.add_argument("--peer_venvs", type=Path, default=None,
                        help="peers_env.sh's folder: time sentence-transformers' ONNX/OpenVINO backends too")
    parser.add_argument("--exports", nargs="+", default=[name for name, *_ in EXPORTS],
                        choices=[name for name, *_ in EXPORTS], metavar="ROW",
                        help="our export rows to time (default: all): " + ", ".join(name for name, *_ in EXPORTS))
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS,
                        help="the peer environments to time, with --peer_venvs")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--size", choices=SIZES, default="e5-small", help=SIZE_HELP)
    args = parser.parse_args()
    info = print_header()

    from sentence_transformers import SentenceTransformer

    from finbert2.export.cli import ExportArguments, run_export
    from finbert2.precision import cpu_bf16_flags
    from finbert2.retrieve.encoder import DenseEncoder

    work = work_dir("finbert2-backends-")
    # e5-small as converted; a scratch size (BERT-base) is a seeded random encoder: speed and agreement, no nDCG
    source = model_folder(args.size, work, "encoder")
    calibration = work / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in demo_documents(100)),
                           encoding="utf-8")
    exports = {}
    for name, fmt, quantize, precision in EXPORTS:
        if name not in args.exports or precision == "bf16" and not cpu_bf16_flags():
            continue
        started = time.perf_counter()
        run_export(ExportArguments(str(source), str(work / name.replace(" ", "_")), format=fmt, quantize=quantize,
                                   inference_precision=precision,
                                   calibration_data=str(calibration) if quantize == "int8-static" else None))
        exports[name] = (work / name.replace(" ", "_"), time.perf_counter() - started)
    passages, queries = texts_for(args)
    kwargs = {"max_length": args.max_length, "batch_size": args.batch_size}
    ours = {"ours torch fp32": DenseEncoder.from_pretrained(str(source), device="cpu", bf16=False, **kwargs)}
    if cpu_bf16_flags():
        ours["ours torch bf16"] = DenseEncoder.from_pretrained(str(source), device="cpu", bf16=True, **kwargs)
    ours |= {f"ours {name}": DenseEncoder.from_pretrained(str(folder), **kwargs) for name, (folder, _) in exports.items()}
    prompts = {"passage": ours["ours torch fp32"].passage_instruction, "query": ours["ours torch fp32"].query_instruction}
    peer = SentenceTransformer(str(source), device="cpu")
    peer.max_seq_length = args.max_length

    def peer_encode(items, prompt):
        return peer.encode([prompt + t for t in items], batch_size=args.batch_size, normalize_embeddings=True)

    peer_pythons = {}
    if args.peer_venvs:
        texts = work / "texts.json"
        texts.write_text(json.dumps({"passages": passages, "queries": queries, "prompts": prompts}, ensure_ascii=False),
                         encoding="utf-8")
        for backend in args.peers:
            python = args.peer_venvs / backend / "bin" / "python"
            if not python.is_file():
                sys.exit(f"backends.py: {python} not found: run peers_env.sh {args.peer_venvs} first")
            base = [str(Path(__file__).with_name("peers.py")), "--backend", backend, "--model", str(source),
                    "--work", str(work / "peers"), "--batch_size", str(args.batch_size)]
            subprocess.run([str(python), *base, "--prepare", "--calibration", str(calibration)], check=True)
            peer_pythons[backend] = (python, base + ["--texts", str(texts), "--single_queries", str(args.single_queries)])

    for encoder in ours.values():  # warm-up
        encoder.encode_passages(passages[:8])
    peer_encode(passages[:8], prompts["passage"])
    rounds: list[list[dict]] = []
    for round_number in range(args.rounds):
        rows = [{"path": REFERENCE, "process": "ours"}
                | time_encoder(lambda p: peer_encode(p, prompts["passage"]), lambda q: peer_encode(q, prompts["query"]),
                               passages, queries, args.single_queries)]
        for name, encoder in ours.items():
            rows.append({"path": name, "process": "ours"}
                        | time_encoder(encoder.encode_passages, encoder.encode_queries, passages, queries,
                                       args.single_queries))
        for backend, (python, base) in peer_pythons.items():
            rows += run_peer(python, backend, base, work / f"peer_{backend}_{round_number}.json")
        rounds.append(rows)
        print(f"round {round_number + 1}/{args.rounds} done", flush=True)

    reference = rounds[-1][[r["path"] for r in rounds[-1]].index("ours torch fp32")]["vectors"]
    quality = ndcg_at_10(ours, args.eval_data)

    results = []
    print("\n| path | passages/s | x ST torch fp32 | queries/s | x ST | single query ms (p50) | min cosine | mean cosine"
          " | nDCG@10 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = [(r["process"], r["path"]) for r in rounds[0]]
    for process, path in keys:
        per_round = [next(r for r in rows if (r["process"], r["path"]) == (process, path)) for rows in rounds]
        refs = [next(r for r in rows if (r["process"], r["path"]) == (process, REFERENCE)) for rows in rounds]
        row = {"path": path, "process": process, **round_summary(per_round, refs, reference, "x_st_torch_fp32"),
               "ndcg_at_10": quality.get(path)}
        results.append(row)
        label = path if process == "ours" else f"{path} [{process} env]"
        ndcg = f"{row['ndcg_at_10']:.4f}" if row["ndcg_at_10"] is not None else ""
        print(f"| {label} | {row['passages_per_second']:.1f} | {row['x_st_torch_fp32']:.2f} | "
              f"{row['queries_per_second']:.1f} | {row['queries_x_st_torch_fp32']:.2f} | {row['single_query_ms_p50']:.2f} | "
              f"{row['min_cosine']:.5f} | {row['mean_cosine']:.5f} | {ndcg} |", flush=True)
    write_record(args.output, {"header": info, "model": size_description(args.size), "passages": len(passages),
                               "passages_file": str(args.passages_file) if args.passages_file else "demo pool",
                               "queries": len(queries), "rounds": args.rounds, "batch_size": args.batch_size,
                               "max_length": args.max_length, "eval_data": args.eval_data,
                               "export_seconds": {k: v[1] for k, v in exports.items()},
                               "model_bytes": {k: sum(f.stat().st_size for d in ("onnx", "openvino") if (v[0] / d).is_dir()
                                                      for f in (v[0] / d).iterdir()) for k, v in exports.items()},
                               "results": results})


if __name__ == "__main__":
    main()
