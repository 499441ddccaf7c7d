"""``finbert2 export MODEL_DIR OUT [--format onnx|openvino] [--quantize none|int8-dynamic|int8-static]
[--calibration_data FILE] [--check EVAL] [--max_drop X]``.

    finbert2 export runs/retriever runs/retriever-onnx --quantize int8-dynamic \\
        --check data/demo/retrieval/eval --max_drop 0.005
    finbert2 export runs/classify runs/classify-onnx --quantize int8-dynamic --check data/demo/sentiment/test.jsonl
    finbert2 export runs/retriever runs/retriever-ov --format openvino --quantize int8-static \\
        --calibration_data data/demo/corpus.jsonl --check data/demo/retrieval/eval
    finbert2 export runs/reranker runs/reranker-ov --format openvino --quantize int8-static \
        --calibration_data runs/mined.jsonl --check data/demo/retrieval/eval --check_top_k 20

Writes OUT in sentence-transformers' backend layout (``onnx/model.onnx``, ``onnx/model_qint8.onnx`` when
quantized; ``openvino/openvino_model.xml``, ``openvino/openvino_model_qint8_quantized.xml``; beside
``config.json``, the tokenizer and the sentence-transformers modules) and
``export_report.json`` (what was exported, and with ``--check`` the source and exported scores). Every
command that loads a model takes OUT as it is. The folder is built aside and moved into place only when
the check passes: a failed check exits non-zero and leaves OUT holding only its report (or, when OUT held
an earlier export, leaves that untouched and writes ``OUT.rejected.json``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finbert2.errors import ConfigError, FinBERT2Error, OutputDirError

logger = logging.getLogger("finbert2.export")

FORMATS = ("onnx", "openvino")
# ONNX Runtime: dynamic int8 (scales per batch, no data needed); OpenVINO: NNCF's static int8 (calibrated).
QUANTIZATIONS = {"onnx": ("none", "int8-dynamic"), "openvino": ("none", "int8-static")}
# OpenVINO's INFERENCE_PRECISION_HINT; ONNX Runtime's CPU provider runs the graph as exported.
INFERENCE_PRECISIONS = {"onnx": ("f32",), "openvino": ("f32", "bf16")}
# The files a model folder holds besides its weights that an exported folder keeps.
ST_MODULE_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


@dataclass
class ExportArguments:
    model_name_or_path: str = field(metadata={"help": "Retriever (sentence-transformers or encoder folder) or "
                                                      "classifier folder to export (or the first positional argument)."})
    output_dir: str = field(metadata={"help": "Folder to write (or the second positional argument)."})
    format: str = field(default="onnx", metadata={
        "help": "onnx (ONNX Runtime) or openvino (OpenVINO IR): sentence-transformers' backend names."})
    quantize: str = field(default="none", metadata={
        "help": "none (fp32); onnx: int8-dynamic (int8 weights per channel, activations quantized per batch); "
                "openvino: int8-static (NNCF, activation scales calibrated on --calibration_data)."})
    calibration_data: str | None = field(default=None, metadata={
        "help": "Texts (JSONL with --text_field, CSV, or .txt one per line) calibrating int8-static; up to 300 used. "
                "Rerankers: retrieval training rows (query, pos, neg), calibrated on their pairs."})
    inference_precision: str = field(default="f32", metadata={
        "help": "openvino: the precision OpenVINO runs the graph's float ops in, f32 or bf16 (where the CPU has "
                "AVX512-BF16/AMX; elsewhere OpenVINO keeps f32); recorded in the report, checked and served."})
    check: str | None = field(default=None, metadata={
        "help": "Retrieval evaluation folder (retrievers: nDCG@10, vector cosines; rerankers: nDCG@10 of BM25's "
                "top --check_top_k reordered, queries with the same top 10) or labelled classification file "
                "(classifiers: macro-F1, label agreement) scoring the export against the source model."})
    check_split: str = field(default="test", metadata={"help": "Split of a retrieval --check folder."})
    max_length: int | None = field(default=None, metadata={
        "help": "Rerankers: longest (query, passage) pair in tokens for the calibration, the check and the exported "
                "folder's default (recorded as its tokenizer's model_max_length); default: the source folder's "
                "(`rerank train` records its --max_len there)."})
    check_top_k: int = field(default=20, metadata={
        "help": "Rerankers: BM25's top K of each check query that both models reorder."})
    text_field: str = field(default="text", metadata={"help": "Text field of a classification --check file."})
    label_field: str = field(default="label", metadata={"help": "Label field of a classification --check file."})
    max_drop: float = field(default=0.01, metadata={"help": "Largest allowed drop of nDCG@10 / macro-F1 (absolute)."})
    min_cosine: float = field(default=0.0, metadata={
        "help": "Smallest allowed cosine between the source and exported vectors of any check text (retrievers)."})
    min_agreement: float = field(default=0.0, metadata={
        "help": "Smallest allowed share of check texts given the source model's labels (classifiers), or of check "
                "queries whose reranked top 10 is the source model's (rerankers)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier export in output_dir."})

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"finbert2 export: --format must be one of {', '.join(FORMATS)}, not '{self.format}'")
        if self.quantize not in QUANTIZATIONS[self.format]:
            raise ConfigError(f"finbert2 export: --quantize for --format {self.format} must be one of "
                              f"{', '.join(QUANTIZATIONS[self.format])}, not '{self.quantize}'")
        if (self.quantize == "int8-static") != bool(self.calibration_data):
            raise ConfigError("finbert2 export: --calibration_data goes with --quantize int8-static, and only with it")
        if self.inference_precision not in INFERENCE_PRECISIONS[self.format]:
            raise ConfigError(f"finbert2 export: --inference_precision for --format {self.format} must be one of "
                              f"{', '.join(INFERENCE_PRECISIONS[self.format])}, not '{self.inference_precision}'")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError("finbert2 export: --max_length must be at least 8 tokens")
        if self.check_top_k < 1:
            raise ConfigError("finbert2 export: --check_top_k must be at least 1")
        if self.max_drop < 0 or not 0 <= self.min_cosine <= 1 or not 0 <= self.min_agreement <= 1:
            raise ConfigError("finbert2 export: need --max_drop >= 0 and --min_cosine, --min_agreement in [0, 1]")
        if Path(self.output_dir).resolve() == Path(self.model_name_or_path).resolve():
            raise ConfigError("finbert2 export: output_dir must differ from the model folder")


def model_kind(name_or_path: str) -> str:
    """``reranker`` for a *ForSequenceClassification folder of one logit (``finbert2 rerank train``'s
    cross-encoder), ``classifier`` for one of more, else ``retriever``."""
    from finbert2.modeling import model_config

    try:
        config = model_config(name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{name_or_path}: cannot read a model config ({str(err).splitlines()[0]})") from None
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return "retriever"
    single_logit = config.num_labels == 1 and config.problem_type != "multi_label_classification"
    return "reranker" if single_logit else "classifier"


def load_runner(kind: str, path: str | Path, max_length: int | None = None):
    """The object our commands run the model through: ``DenseEncoder``, ``SequenceClassifier`` or
    ``CrossEncoderScorer`` (CPU, fp32; a reranker's pairs cut at ``max_length`` when given)."""
    if kind == "classifier":
        from finbert2.classify.inference import SequenceClassifier

        return SequenceClassifier.from_pretrained(str(path), device="cpu")
    if kind == "reranker":
        from finbert2.rerank.modeling import CrossEncoderScorer

        return CrossEncoderScorer.from_pretrained(str(path), max_length=max_length)
    from finbert2.retrieve.encoder import DenseEncoder

    return DenseEncoder.from_pretrained(str(path), device="cpu")


def holds_export(folder: Path) -> bool:
    """A folder with anything but a rejected export's report."""
    return folder.is_dir() and any(entry.name != "export_report.json" for entry in folder.iterdir())


def write_non_weight_files(source: Path, runner, target: Path) -> None:
    """Config, tokenizer and sentence-transformers modules: everything but the torch weights."""
    runner.model.config.save_pretrained(target)
    runner.tokenizer.save_pretrained(target)
    for name in ST_MODULE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    for entry in source.iterdir() if source.is_dir() else []:
        if entry.is_dir() and entry.name.endswith(("_Pooling", "_Normalize")):
            shutil.copytree(entry, target / entry.name)


def read_texts(path: str, text_field: str) -> list[str]:
    from finbert2.data import iter_records
    from finbert2.data.readers import get_text
    from finbert2.errors import DataError

    texts = [get_text(obj, text_field, Path(path), lineno) for lineno, obj in iter_records(Path(path))]
    if not texts:
        raise DataError(path, None, f"no texts (field '{text_field}')")
    return texts


def calibration_rows(kind: str, runner, calibration: list) -> list[tuple[list[int], list[int] | None]]:
    """``(token ids, segment ids or None)`` of each calibration item, as the runner would feed it: a passage with
    the retriever's passage prompt, a classifier's text cut at its length, a reranker's (query, passage) pair."""
    if kind == "reranker":
        from finbert2.rerank.modeling import pair_token_types

        rows = runner.pair_rows([q for q, _ in calibration], [p for _, p in calibration])
        if not runner.token_types:
            return [(row, None) for row in rows]
        return [(row, pair_token_types([row], runner.tokenizer.sep_token_id)[0].tolist()) for row in rows]
    prompt = "" if kind == "classifier" else runner.passage_instruction
    max_length = runner.settings.max_length if kind == "classifier" else runner.max_length
    rows = runner.tokenizer([prompt + t for t in calibration], truncation=True, max_length=max_length,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return [(row, None) for row in rows]


def read_calibration(kind: str, path: str, text_field: str) -> list:
    """Texts; for a reranker, (query, passage) pairs from retrieval training rows (``query``, ``pos``, ``neg``:
    the positive and each negative in turn, so both ends of the score range are calibrated)."""
    if kind != "reranker":
        return read_texts(path, text_field)
    from finbert2.data import read_retrieval_train
    from finbert2.errors import DataError

    pairs = [(row["query"], passage) for row in read_retrieval_train(path, require_neg=False)
             for passage in row["pos"][:1] + row["neg"][:3]]
    if not pairs:
        raise DataError(path, None, "no (query, pos/neg) rows to calibrate a reranker with")
    return pairs


def export_model_file(args: ExportArguments, kind: str, runner, staging: Path, calibration: list | None) -> Path:
    """Write the graph (and its quantized form) into ``staging``; returns the one model file kept there."""
    from finbert2.export import openvino as ov_export
    from finbert2.export.onnx import ClassifierGraph, EncoderGraph, export_onnx, quantize_dynamic_int8

    graph = EncoderGraph(runner.model) if kind == "retriever" else ClassifierGraph(runner.model)
    onnx_file = export_onnx(graph, staging / "onnx" / "model.onnx", runner.model.config.vocab_size)
    if args.format == "onnx" and args.quantize == "none":
        return onnx_file
    if args.format == "onnx":  # int8-dynamic
        model_file = quantize_dynamic_int8(onnx_file, staging / "onnx" / "model_qint8.onnx")
        onnx_file.unlink()  # one model file per folder: the one the check scores
        return model_file
    # OpenVINO reads the ONNX graph: one trace serves both formats.
    model = ov_export.convert(onnx_file, staging / "openvino" / ov_export.FP32_FILE)
    shutil.rmtree(staging / "onnx")
    if args.quantize == "none":
        return staging / "openvino" / ov_export.FP32_FILE
    model_file = ov_export.quantize_static_int8(model, calibration_rows(kind, runner, calibration),
                                                staging / "openvino" / ov_export.STATIC_INT8_FILE)
    for fp32_part in (staging / "openvino").glob("openvino_model.*"):
        fp32_part.unlink()
    return model_file


def run_export(args: ExportArguments) -> dict:
    from finbert2.data import write_json
    from finbert2.export.check import (Gate, check_classifier, check_reranker, check_retriever, gate_failures,
                                       load_check_data)
    from finbert2.export.runtime import REPORT_FILE, exported_backend

    started = time.perf_counter()
    source, out = Path(args.model_name_or_path), Path(args.output_dir)
    if exported_backend(source) != "torch":
        raise ConfigError(f"{source}: is already an exported model; export the torch folder it came from")
    if holds_export(out) and not args.overwrite_output_dir:
        raise OutputDirError(f"{out}: holds an earlier export; pass --overwrite_output_dir True or choose another folder")
    kind = model_kind(args.model_name_or_path)
    check_data = load_check_data(kind, args.check, args.check_split, args.text_field, args.label_field) \
        if args.check else None  # a bad check set fails before any work
    calibration = read_calibration(kind, args.calibration_data, args.text_field) if args.calibration_data else None
    if args.max_length is not None and kind != "reranker":
        raise ConfigError(f"finbert2 export: --max_length is for rerankers; {source} is a {kind} (its folder "
                          f"records its own length)")
    runner = load_runner(kind, source, args.max_length)
    if kind == "reranker":  # the exported folder cuts pairs where its check did
        runner.tokenizer.model_max_length = runner.max_length

    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_non_weight_files(source, runner, staging)
        model_file = export_model_file(args, kind, runner, staging, calibration)
        report = {"source": str(source), "kind": kind, "format": args.format, "quantize": args.quantize,
                  "inference_precision": args.inference_precision,
                  **({"max_length": runner.max_length} if kind == "reranker" else {}),
                  "model_file": model_file.relative_to(staging).as_posix(),
                  "model_bytes": sum(f.stat().st_size for f in model_file.parent.glob(model_file.stem + ".*")),
                  "gate": asdict(Gate(args.max_drop, args.min_cosine, args.min_agreement))}
        failures: list[str] = []
        if check_data is not None:
            write_json(staging / REPORT_FILE, report)  # the runtime reads the model file and precision from it
            exported = load_runner(kind, staging)
            if kind == "reranker":
                result = check_reranker(runner, exported, check_data, args.check_top_k)
            else:
                result = (check_classifier if kind == "classifier" else check_retriever)(runner, exported, check_data)
            report["check"] = {"data": args.check, **result}
            failures = gate_failures(result, Gate(args.max_drop, args.min_cosine, args.min_agreement))
        report.update(passed=not failures, failures=failures, seconds=time.perf_counter() - started)
        return publish(staging, out, report, failures, "export")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out: Path, report: dict, failures: list[str], what: str) -> dict:
    """Move a checked ``staging`` folder (report written into it) to ``out``; or, when the check failed, write
    the report alone (into ``out``, or beside it when ``out`` holds an earlier model) and raise."""
    from finbert2.data import write_json
    from finbert2.export.runtime import REPORT_FILE

    logger.info("%s report: %s", what, json.dumps(report, ensure_ascii=False))
    if failures:
        rejected = out.parent / f"{out.name}.rejected.json" if holds_export(out) else out / REPORT_FILE
        rejected.parent.mkdir(parents=True, exist_ok=True)
        write_json(rejected, report)
        raise FinBERT2Error(f"{out}: {what} rejected by the check ({'; '.join(failures)}); "
                            f"no model written, report in {rejected}")
    write_json(staging / REPORT_FILE, report)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return report


def positional_to_flags(argv: list[str]) -> list[str]:
    """``MODEL_DIR OUT [--key value ...]`` -> ``--model_name_or_path MODEL_DIR --output_dir OUT ...``."""
    argv = list(argv)
    flags: list[str] = []
    for name in ("--model_name_or_path", "--output_dir"):
        if argv and not argv[0].startswith("-") and not argv[0].lower().endswith((".yaml", ".yml", ".json")):
            flags += [name, argv.pop(0)]
    return flags + argv


def main(argv: list[str] | None = None) -> int:
    from finbert2.config import parse_args
    from finbert2.run import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = parse_args((ExportArguments,), positional_to_flags(argv), prog="finbert2 export")
    setup_logging()
    report = run_export(args)
    summary = f"exported {report['kind']} -> {args.output_dir}/{report['model_file']} ({report['model_bytes'] / 1e6:.1f} MB)"
    if "check" in report:
        check = report["check"]
        summary += f"; {check['metric']} {check['source']:.4f} -> {check['exported']:.4f}"
    print(summary, file=sys.stderr)
    return 0
