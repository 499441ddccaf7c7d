"""Our exported backends against sentence-transformers torch fp32 on the same passages and machine.

    PYTHONPATH=src python benchmarks/encode_throughput/backends.py --passages 256 --rounds 3 \\
        --output benchmarks/encode_throughput/e5-small-backends.json

e5-small (vocab pruned as in ``bench.py``) is exported by ``finbert2 export`` to ONNX fp32 and int8-dynamic
and OpenVINO fp32 and int8-static (calibrated on 100 demo corpus texts); each round times, in this order,
``SentenceTransformer.encode`` (torch fp32, the reference), then our ``DenseEncoder`` on the torch folder
and on each export, over the same passages
(passage prompt, batch 32, max length 512). Reported: the median passages/s over the rounds, its ratio to
sentence-transformers in the same round, and the min / mean cosine of each row's vectors to our torch fp32
vectors. The ONNX peers that need optimum (sentence-transformers' own ONNX/OpenVINO backends) run in
their own environment: see ``CPU_INFERENCE_PEERS.md`` in the shared folder for their numbers here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import demo_documents, demo_passages, e5_small_folder, print_header, work_dir, write_record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    info = print_header()

    from sentence_transformers import SentenceTransformer

    from finbert2.export.cli import ExportArguments, run_export
    from finbert2.retrieve.encoder import DenseEncoder

    source = e5_small_folder()
    work = work_dir("finbert2-backends-")
    calibration = work / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in demo_documents(100)),
                           encoding="utf-8")
    exports = {}
    for name, fmt, quantize in (("onnx fp32", "onnx", "none"), ("onnx int8-dynamic", "onnx", "int8-dynamic"),
                                ("openvino fp32", "openvino", "none"), ("openvino int8-static", "openvino", "int8-static")):
        started = time.perf_counter()
        run_export(ExportArguments(str(source), str(work / name.replace(" ", "_")), format=fmt, quantize=quantize,
                                   calibration_data=str(calibration) if quantize == "int8-static" else None))
        exports[name] = (work / name.replace(" ", "_"), time.perf_counter() - started)
    passages = demo_passages(args.passages)
    peer = SentenceTransformer(str(source), device="cpu")
    ours = {"ours torch fp32": DenseEncoder.from_pretrained(str(source), device="cpu", bf16=False)}
    ours |= {f"ours {name}": DenseEncoder.from_pretrained(str(folder)) for name, (folder, _) in exports.items()}
    prompt = ours["ours torch fp32"].passage_instruction
    rows = {"sentence-transformers torch fp32": []} | {name: [] for name in ours}
    vectors = {}
    for encoder in ours.values():  # warm-up
        encoder.encode_passages(passages[:8], batch_size=args.batch_size)
    peer.encode([prompt + p for p in passages[:8]], batch_size=args.batch_size)
    for _ in range(args.rounds):
        start = time.perf_counter()
        vectors["sentence-transformers torch fp32"] = peer.encode([prompt + p for p in passages],
                                                                  batch_size=args.batch_size, normalize_embeddings=True)
        rows["sentence-transformers torch fp32"].append(len(passages) / (time.perf_counter() - start))
        for name, encoder in ours.items():
            start = time.perf_counter()
            vectors[name] = encoder.encode_passages(passages, batch_size=args.batch_size)
            rows[name].append(len(passages) / (time.perf_counter() - start))
    reference = vectors["ours torch fp32"]
    results = []
    for name, speeds in rows.items():
        ratios = [s / p for s, p in zip(speeds, rows["sentence-transformers torch fp32"])]
        cos = (vectors[name] * reference).sum(1) / (np.linalg.norm(vectors[name], axis=1) * np.linalg.norm(reference, axis=1))
        results.append({"path": name, "passages_per_second": statistics.median(speeds),
                        "x_st_torch_fp32": statistics.median(ratios), "min_cosine": float(cos.min()),
                        "mean_cosine": float(cos.mean())})
        print(f"| {name} | {statistics.median(speeds):.1f} | {statistics.median(ratios):.2f} | "
              f"{cos.min():.5f} | {cos.mean():.5f} |", flush=True)
    write_record(args.output, {"header": info, "passages": len(passages), "rounds": args.rounds,
                               "batch_size": args.batch_size, "export_seconds": {k: v[1] for k, v in exports.items()},
                               "model_bytes": {k: sum(f.stat().st_size for d in ("onnx", "openvino") if (v[0] / d).is_dir()
                                                      for f in (v[0] / d).iterdir()) for k, v in exports.items()},
                               "results": results})


if __name__ == "__main__":
    main()
