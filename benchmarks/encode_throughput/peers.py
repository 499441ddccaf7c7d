"""sentence-transformers' own ONNX / OpenVINO backends and fastembed, timed inside their virtual environment.

Runs under ``VENV_ROOT/onnx/bin/python`` or ``VENV_ROOT/openvino/bin/python`` (``peers_env.sh``); imports
nothing from finbert2 (those environments pin an older transformers). ``backends.py --peer_venvs VENV_ROOT``
starts it once per peer to export, then once per round between its own rounds:

    python peers.py --backend onnx --model E5_FOLDER --work DIR --prepare --calibration FILE.jsonl
    python peers.py --backend onnx --model E5_FOLDER --work DIR --texts TEXTS.json --output ROUND.json

Every round times sentence-transformers torch fp32 (the reference every ratio is over) and then the
backend's rows on the same passages and queries in this process, with the prompts e5 was trained with
(the folder's own), batch 32, and writes passages/s, queries/s, single-query ms and the passage vectors
(``.npy`` beside the output, for the cosine to our torch fp32 in ``backends.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

ONNX_INT8_FILE = "model_qint8_{config}.onnx"
OPENVINO_INT8_FILE = "openvino_model_qint8_quantized.xml"


def onnx_int8_config() -> str:
    """optimum's dynamic-quantization preset for this CPU (its avx512_vnni one where the CPU has VNNI)."""
    flags = set(Path("/proc/cpuinfo").read_text().split())
    return "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"


def modules_for_this_version(path: Path) -> None:
    """sentence-transformers 6 writes its modules under new import paths that 5.x (the ONNX environment's)
    cannot import; 5.x finds the same classes under ``sentence_transformers.models``."""
    import sentence_transformers

    if int(sentence_transformers.__version__.split(".")[0]) >= 6:
        return
    modules = json.loads(path.read_text(encoding="utf-8"))
    for module in modules:
        module["type"] = "sentence_transformers.models." + module["type"].rsplit(".", 1)[1]
    path.write_text(json.dumps(modules, indent=2), encoding="utf-8")


def prepare(args) -> None:
    """Export the folder to the backend (fp32) and its int8 file, as sentence-transformers documents."""
    from sentence_transformers import SentenceTransformer

    target = args.work / args.backend
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(args.model, target)
    modules_for_this_version(target / "modules.json")
    if args.backend == "onnx":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        model = SentenceTransformer(str(target), backend="onnx", device="cpu")  # exports onnx/model.onnx
        model.save_pretrained(str(target))
        export_dynamic_quantized_onnx_model(model, onnx_int8_config(), str(target))
    else:
        from optimum.intel import OVQuantizationConfig
        from sentence_transformers import export_static_quantized_openvino_model

        model = SentenceTransformer(str(target), backend="openvino", device="cpu")
        model.save_pretrained(str(target))
        # NNCF's calibration set: the texts backends.py calibrates our own int8-static export with, as a
        # local dataset folder (the default downloads GLUE)
        data = args.work / "calibration_dataset"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.calibration, data / "train.jsonl")
        count = sum(1 for line in args.calibration.read_text(encoding="utf-8").splitlines() if line.strip())
        export_static_quantized_openvino_model(
            model, OVQuantizationConfig(num_samples=count), str(target), dataset_name=str(data),
            dataset_config_name="default", dataset_split="train", column_name="text")
    print(f"peers: {args.backend} exported to {target}", flush=True)


class FastEmbedModel:
    """fastembed's ``TextEmbedding`` over the ONNX graph sentence-transformers exported (fastembed's own e5 entry
    downloads from the hub), with e5's mean pooling and normalisation, behind ``encode`` as the other rows."""

    def __init__(self, folder: Path, pooling: str, dimension: int):
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        name = "finbert2-benchmark/local-e5"
        if name not in {m["model"] for m in TextEmbedding.list_supported_models()}:
            TextEmbedding.add_custom_model(name, pooling=PoolingType[pooling.upper()], normalization=True,
                                           sources=ModelSource(hf=name), dim=dimension, model_file="onnx/model.onnx")
        self.model = TextEmbedding(name, specific_model_path=str(folder), local_files_only=True)

    def encode(self, texts: list[str], batch_size: int, normalize_embeddings: bool = True) -> np.ndarray:
        return np.stack(list(self.model.embed(texts, batch_size=batch_size)))


def rows_of(backend: str, folder: Path):
    """(row name, loaded model) of the backend, after the torch fp32 reference."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(folder), device="cpu")
    yield "sentence-transformers torch fp32", reference
    if backend == "onnx":
        yield "sentence-transformers onnx fp32", SentenceTransformer(str(folder), backend="onnx", device="cpu")
        yield (f"sentence-transformers onnx int8-dynamic ({onnx_int8_config()})",
               SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                   model_kwargs={"file_name": "onnx/" + ONNX_INT8_FILE.format(config=onnx_int8_config())}))
        pooling = reference[1].get_config_dict()  # 6.x: pooling_mode; 5.x: one pooling_mode_*_tokens flag each
        mode = pooling.get("pooling_mode") or ("mean" if pooling.get("pooling_mode_mean_tokens") else "cls")
        yield "fastembed onnx fp32", FastEmbedModel(folder, mode, reference.get_sentence_embedding_dimension())
    else:
        # OpenVINO runs an fp32 graph in bf16 where the CPU has it: the f32 hint keeps the row what it says
        yield "sentence-transformers openvino fp32", SentenceTransformer(
            str(folder), backend="openvino", device="cpu", model_kwargs={"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}})
        yield "sentence-transformers openvino int8-static", SentenceTransformer(
            str(folder), backend="openvino", device="cpu", model_kwargs={"file_name": "openvino/" + OPENVINO_INT8_FILE})


def time_round(args) -> None:
    texts = json.loads(args.texts.read_text(encoding="utf-8"))
    passages, queries, prompts = texts["passages"], texts["queries"], texts["prompts"]
    results, vectors = [], {}
    for name, model in rows_of(args.backend, args.work / args.backend):
        encode = lambda items, prompt: model.encode([prompt + t for t in items], batch_size=args.batch_size,  # noqa: E731
                                                    normalize_embeddings=True)
        encode(passages[:8], prompts["passage"])  # warm-up
        start = time.perf_counter()
        vectors[name] = encode(passages, prompts["passage"])
        passages_per_second = len(passages) / (time.perf_counter() - start)
        start = time.perf_counter()
        encode(queries, prompts["query"])
        queries_per_second = len(queries) / (time.perf_counter() - start)
        single = []
        for query in queries[: args.single_queries]:
            start = time.perf_counter()
            encode([query], prompts["query"])
            single.append((time.perf_counter() - start) * 1000)
        results.append({"path": name, "passages_per_second": passages_per_second,
                        "queries_per_second": queries_per_second, "single_query_ms_p50": statistics.median(single)})
        print(f"peers: {name}: {passages_per_second:.1f} passages/s, {queries_per_second:.1f} queries/s, "
              f"{statistics.median(single):.2f} ms a query", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output.with_suffix(".npz"), **{f"v{i}": vectors[r["path"]] for i, r in enumerate(results)})
    args.output.write_text(json.dumps({"backend": args.backend, "results": results}, indent=2), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("onnx", "openvino"), required=True)
    parser.add_argument("--model", type=Path, required=True, help="the e5 folder backends.py exports too")
    parser.add_argument("--work", type=Path, required=True, help="where the exports are kept between calls")
    parser.add_argument("--prepare", action="store_true", help="export and quantize, time nothing")
    parser.add_argument("--calibration", type=Path, help="JSONL with a text field: the int8-static calibration set")
    parser.add_argument("--texts", type=Path, help="JSON {passages, queries, prompts} written by backends.py")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--single_queries", type=int, default=50)
    parser.add_argument("--output", type=Path, help="a round's JSON (vectors in the .npz beside it)")
    args = parser.parse_args()
    if args.prepare:
        prepare(args)
    else:
        time_round(args)


if __name__ == "__main__":
    main()
