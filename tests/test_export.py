"""``finbert2 export``: ONNX round trips of a retriever and a classifier against torch, int8 behind the
check gate, a rejected export leaving no model, and the exported folders run by retrieve, classify and serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_support import NEWS, make_classifier, make_retriever

from finbert2.cli import main as finbert2_main
from finbert2.data import write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LABELS = ["消极", "中性", "积极"]
E5_PROMPTS = {"query": "query: ", "document": "passage: "}


def write_check_sets(root: Path) -> tuple[Path, Path]:
    """A retrieval folder (6 passages, 6 queries) and a labelled file (6 texts) for --check."""
    retrieval = root / "check_retrieval"
    retrieval.mkdir()
    write_jsonl(retrieval / "corpus.jsonl", [{"id": f"d{i}", "title": "", "text": t} for i, t in enumerate(NEWS)])
    write_jsonl(retrieval / "test_queries.jsonl", [{"id": f"q{i}", "text": t[:12]} for i, t in enumerate(NEWS)])
    write_jsonl(retrieval / "test_qrels.jsonl", [{"qid": f"q{i}", "docid": f"d{i}", "relevance": 1}
                                                 for i in range(len(NEWS))])
    labelled = root / "check_labels.jsonl"
    write_jsonl(labelled, [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(NEWS)])
    return retrieval, labelled


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer_dir):
    """Source folders, check sets and their exports (fp32 and int8 retriever, fp32 classifier)."""
    root = tmp_path_factory.mktemp("export")
    retrieval, labelled = write_check_sets(root)
    dirs = {"retriever": make_retriever(tiny_tokenizer_dir, root / "retriever", prompts=E5_PROMPTS),
            "classifier": make_classifier(tiny_tokenizer_dir, root / "classifier", LABELS),
            "check_retrieval": retrieval, "check_labels": labelled}
    for name, source, extra in (
            ("retriever_onnx", "retriever", ["--check", retrieval, "--min_cosine", "0.99999"]),
            ("retriever_int8", "retriever", ["--quantize", "int8-dynamic", "--check", retrieval]),
            ("classifier_onnx", "classifier", ["--check", labelled, "--min_agreement", "1"]),
            ("retriever_openvino", "retriever", ["--format", "openvino", "--check", retrieval, "--min_cosine", "0.99999"]),
            ("classifier_openvino_int8", "classifier", ["--format", "openvino", "--quantize", "int8-static",
                                                        "--calibration_data", labelled, "--check", labelled])):
        assert finbert2_main(["export", str(dirs[source]), str(root / name), *map(str, extra)]) == 0
        dirs[name] = root / name
    return dirs


def report_of(folder: Path) -> dict:
    return json.loads((folder / "export_report.json").read_text(encoding="utf-8"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_retriever_export_keeps_the_layout_and_equals_torch(exported):
    from finbert2.export.runtime import exported_backend
    from finbert2.retrieve.encoder import DenseEncoder

    out = exported["retriever_onnx"]
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model.onnx"]
    assert not list(out.glob("*.safetensors")) and (out / "modules.json").is_file() and (out / "1_Pooling").is_dir()
    assert exported_backend(out) == "onnx" and exported_backend(exported["retriever"]) == "torch"
    torch_encoder = DenseEncoder.from_pretrained(str(exported["retriever"]), device="cpu")
    onnx_encoder = DenseEncoder.from_pretrained(str(out))
    assert (onnx_encoder.pooling, onnx_encoder.query_instruction) == ("mean", "query: ")
    texts = NEWS + ["短"]  # lengths 3..40 tokens in one padded batch
    for method in ("encode_queries", "encode_passages"):
        assert cosines(getattr(torch_encoder, method)(texts), getattr(onnx_encoder, method)(texts)).min() >= 0.99999
    report = report_of(out)
    check = report["check"]
    assert report["passed"] and report["model_file"] == "onnx/model.onnx" and report["quantize"] == "none"
    assert check["queries"] == check["passages"] == len(NEWS) and check["min_cosine"] >= 0.99999
    assert check["drop"] == pytest.approx(check["source"] - check["exported"]) and abs(check["drop"]) < 1e-9


def test_int8_retriever_export_passes_its_gate(exported):
    from finbert2.retrieve.encoder import DenseEncoder

    out = exported["retriever_int8"]
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model_qint8.onnx"]  # the fp32 graph is gone
    report = report_of(out)
    assert report["passed"] and report["model_file"] == "onnx/model_qint8.onnx"
    assert report["model_bytes"] < report_of(exported["retriever_onnx"])["model_bytes"]
    assert report["check"]["drop"] <= 0.01 and 0.99 <= report["check"]["min_cosine"] < 1.0  # int8 is not exact
    torch_vectors = DenseEncoder.from_pretrained(str(exported["retriever"]), device="cpu").encode_passages(NEWS)
    int8_vectors = DenseEncoder.from_pretrained(str(out)).encode_passages(NEWS)
    assert cosines(torch_vectors, int8_vectors).min() >= 0.99


def test_classifier_export_equals_torch_logits_labels_and_cls(exported):
    from finbert2.classify.inference import SequenceClassifier

    torch_clf = SequenceClassifier.from_pretrained(str(exported["classifier"]), device="cpu")
    onnx_clf = SequenceClassifier.from_pretrained(str(exported["classifier_onnx"]))
    expected = torch_clf.predict(NEWS, return_cls=True)
    got = onnx_clf.predict(NEWS, return_cls=True)
    np.testing.assert_allclose(got.logits, expected.logits, atol=1e-4)
    np.testing.assert_allclose(got.cls, expected.cls, atol=1e-4)
    assert got.labels() == expected.labels() and onnx_clf.label_names == LABELS
    check = report_of(exported["classifier_onnx"])["check"]
    assert check["metric"] == "macro_f1" and check["label_agreement"] == 1.0 and check["texts"] == len(NEWS)
    assert check["max_abs_logit_difference"] < 1e-4


def test_openvino_exports_equal_torch_fp32_and_pass_the_gate_in_int8(exported):
    from finbert2.classify.inference import SequenceClassifier
    from finbert2.export.runtime import exported_backend
    from finbert2.retrieve.encoder import DenseEncoder

    out = exported["retriever_openvino"]
    assert exported_backend(out) == "openvino" and not (out / "onnx").exists()
    assert sorted(p.name for p in (out / "openvino").iterdir()) == ["openvino_model.bin", "openvino_model.xml"]
    torch_vectors = DenseEncoder.from_pretrained(str(exported["retriever"]), device="cpu").encode_queries(NEWS)
    assert cosines(torch_vectors, DenseEncoder.from_pretrained(str(out)).encode_queries(NEWS)).min() >= 0.99999
    int8 = exported["classifier_openvino_int8"]
    report = report_of(int8)
    assert report["passed"] and report["model_file"] == "openvino/openvino_model_qint8_quantized.xml"
    assert report["check"]["drop"] <= 0.01 and report["check"]["max_abs_logit_difference"] > 0  # int8 is not exact
    assert report["model_bytes"] < report_of(exported["classifier_onnx"])["model_bytes"]
    torch_logits = SequenceClassifier.from_pretrained(str(exported["classifier"]), device="cpu").predict(NEWS).logits
    int8_logits = SequenceClassifier.from_pretrained(str(int8)).predict(NEWS).logits
    np.testing.assert_allclose(int8_logits, torch_logits, atol=0.05)


def test_static_int8_quantizes_the_linear_layers_and_leaves_the_attention_products_in_float(exported):
    """Weight MatMuls get an int8 input (a FakeQuantize before them); the attention scores and context
    (both inputs activations: quantizing them cost e5-small 0.008 of min cosine) get none."""
    import openvino

    from finbert2.export.openvino import activation_matmuls

    def matmul_inputs(model) -> dict[str, list[str]]:
        return {op.get_friendly_name(): [op.input_value(i).get_node().get_type_name() for i in range(2)]
                for op in model.get_ops() if op.get_type_name() == "MatMul"}

    quantized = matmul_inputs(openvino.Core().read_model(
        exported["classifier_openvino_int8"] / "openvino" / "openvino_model_qint8_quantized.xml"))
    # the fp32 graph of the same classifier, converted from its ONNX export
    attention = set(activation_matmuls(openvino.convert_model(str(exported["classifier_onnx"] / "onnx" / "model.onnx"))))
    assert len(attention) == 2 * 2  # two products per layer, two layers
    float_products = {name for name, inputs in quantized.items() if "FakeQuantize" not in inputs}
    assert float_products == attention and len(quantized) > len(attention)  # every other MatMul is int8


def test_openvino_inference_precision_is_recorded_checked_and_served(exported, tmp_path):
    from finbert2.export.runtime import load_exported
    from finbert2.precision import cpu_bf16_flags
    from finbert2.retrieve.encoder import DenseEncoder

    out = tmp_path / "retriever_openvino_bf16"
    assert finbert2_main(["export", str(exported["retriever"]), str(out), "--format", "openvino",
                          "--inference_precision", "bf16", "--check", str(exported["check_retrieval"])]) == 0
    report = report_of(out)
    assert report["passed"] and report["inference_precision"] == "bf16"
    assert report_of(exported["retriever_openvino"])["inference_precision"] == "f32"
    served, exact = load_exported(out), load_exported(exported["retriever_openvino"])
    assert served.inference_precision == "bf16" and exact.inference_precision == "f32"
    assert exact.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    if cpu_bf16_flags():  # where the CPU has no bf16, OpenVINO keeps f32 whatever the hint
        assert served.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
        vectors = DenseEncoder.from_pretrained(str(out)).encode_queries(NEWS)
        reference = DenseEncoder.from_pretrained(str(exported["retriever_openvino"])).encode_queries(NEWS)
        # bf16 moves the vectors a little (1e-5 on this tiny model)
        assert cosines(vectors, reference).min() > 0.99 and np.abs(vectors - reference).max() > 1e-6
    # the same graph files at another precision are another encoder to the evaluation's score cache
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(out, same)
    shutil.copytree(out, other)
    (other / "export_report.json").write_text(json.dumps(report | {"inference_precision": "f32"}), encoding="utf-8")
    assert load_exported(same).weights_digest() == served.weights_digest() != load_exported(other).weights_digest()


def test_a_check_that_fails_exits_non_zero_and_leaves_no_model(exported, tmp_path, capsys):
    out = tmp_path / "rejected"
    # int8 moves vectors (min cosine < 1 on this model, see the test above): a gate it cannot meet.
    code = finbert2_main(["export", str(exported["retriever"]), str(out), "--quantize", "int8-dynamic",
                          "--check", str(exported["check_retrieval"]), "--min_cosine", "0.9999999"])
    assert code == 2 and "min cosine" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["export_report.json"]  # no onnx/, config or tokenizer
    report = report_of(out)
    assert not report["passed"] and "min cosine" in report["failures"][0]
    assert not list(tmp_path.glob(".*partial"))
    # An earlier export in the folder stays as it was; the rejected report goes beside it.
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "onnx").mkdir()
    (previous / "onnx" / "model.onnx").write_bytes(b"earlier")
    code = finbert2_main(["export", str(exported["retriever"]), str(previous), "--quantize", "int8-dynamic",
                          "--check", str(exported["check_retrieval"]), "--min_cosine", "0.9999999",
                          "--overwrite_output_dir", "True"])
    assert code == 2 and (previous / "onnx" / "model.onnx").read_bytes() == b"earlier"
    assert not json.loads((tmp_path / "previous.rejected.json").read_text(encoding="utf-8"))["passed"]


def test_gate_failures_name_each_bound_broken():
    from finbert2.export.check import Gate, gate_failures

    retrieval = {"metric": "ndcg_at_10", "source": 0.80, "exported": 0.78, "drop": 0.02, "min_cosine": 0.97}
    assert gate_failures(retrieval, Gate(max_drop=0.03, min_cosine=0.95)) == []
    failures = gate_failures(retrieval, Gate(max_drop=0.01, min_cosine=0.98))
    assert failures == ["ndcg_at_10 dropped 0.0200 (0.8000 -> 0.7800), more than --max_drop 0.01",
                        "min cosine to the source vectors 0.970000 < --min_cosine 0.98"]
    labels = {"metric": "macro_f1", "source": 0.5, "exported": 0.5, "drop": 0.0, "label_agreement": 0.985}
    assert gate_failures(labels, Gate(min_agreement=0.99)) == ["label agreement 0.9850 < --min_agreement 0.99"]


def test_bad_arguments_and_check_sets_are_one_line_errors(exported, tmp_path, capsys):
    cases = [
        (["--quantize", "int4"], "--quantize for --format onnx must be one of none, int8-dynamic"),
        (["--format", "openvino", "--quantize", "int8-dynamic"], "openvino must be one of none, int8-static"),
        (["--format", "openvino", "--quantize", "int8-static"], "--calibration_data goes with --quantize int8-static"),
        (["--format", "tflite"], "--format must be one of onnx, openvino"),
        (["--inference_precision", "bf16"], "--inference_precision for --format onnx must be one of f32"),
        (["--max_drop", "-0.1"], "need --max_drop >= 0"),
        (["--max_length", "64"], "--max_length is for rerankers"),
    ]
    for extra, message in cases:
        assert finbert2_main(["export", str(exported["retriever"]), str(tmp_path / "x"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert finbert2_main(["export", str(exported["retriever_onnx"]), str(tmp_path / "x")]) == 2
    assert "already an exported model" in capsys.readouterr().err
    foreign = tmp_path / "foreign.jsonl"
    write_jsonl(foreign, [{"text": NEWS[0], "label": "利好"}])
    assert finbert2_main(["export", str(exported["classifier"]), str(tmp_path / "x"), "--check", str(foreign)]) == 2
    assert "利好" in capsys.readouterr().err
    assert finbert2_main(["export", str(exported["retriever"]), str(exported["retriever_onnx"])]) == 2
    assert "holds an earlier export" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_retrieve_evaluate_and_classify_predict_take_the_exported_folder(exported, tmp_path, caplog):
    # a copy of the exported folder is the same encoder: scored once, its scores reused
    copy = shutil.copytree(exported["retriever_onnx"], tmp_path / "onnx_copy")
    with caplog.at_level("INFO", logger="finbert2"):
        assert finbert2_main(["retrieve", "evaluate", "--eval_data", str(exported["check_retrieval"]),
                              "--models", str(exported["retriever"]), str(exported["retriever_onnx"]), str(copy),
                              "--output_dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["retriever_onnx_ndcg_at_10"] == pytest.approx(metrics["retriever_ndcg_at_10"], abs=1e-9)
    assert "onnx_copy: the same weights, tokenizer and settings as retriever_onnx; its scores reused" in caplog.text
    assert "retriever_onnx: the same weights" not in caplog.text  # torch and ONNX are different encoders
    rows = {}
    for name in ("classifier", "classifier_onnx"):
        out = tmp_path / f"{name}.jsonl"
        assert finbert2_main(["classify", "predict", "--model_name_or_path", str(exported[name]),
                              "--input_file", str(exported["check_labels"]), "--output_file", str(out)]) == 0
        rows[name] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prediction"] for r in rows["classifier_onnx"]] == [r["prediction"] for r in rows["classifier"]]
    for got, expected in zip(rows["classifier_onnx"], rows["classifier"]):
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def test_serve_backend_onnx_answers_like_torch(exported, tmp_path):
    from fastapi.testclient import TestClient

    from finbert2.errors import ConfigError
    from finbert2.serve.app import create_app
    from finbert2.serve.args import ServeArguments

    docs = [{"id": f"d{i}", "title": "", "text": t} for i, t in enumerate(NEWS)]
    answers = {}
    for backend, retriever, classifier in (("torch", "retriever", "classifier"),
                                           ("onnx", "retriever_onnx", "classifier_onnx")):
        args = ServeArguments(retriever=str(exported[retriever]), classifier=[str(exported[classifier])],
                              index=str(tmp_path / f"index_{backend}"), backend=backend)
        with TestClient(create_app(args)) as client:
            for _ in range(600):
                if client.get("/ready").status_code == 200:
                    break
                assert not client.get("/info").json()["load_error"]
                __import__("time").sleep(0.05)
            assert client.post("/index/documents", json={"documents": docs}).status_code == 200
            info = client.get("/info").json()["models"]
            answers[backend] = {
                "backends": [m["backend"] for m in info],
                "embed": np.array(client.post("/embed", json={"inputs": NEWS, "prompt_name": "query"}).json()),
                "search": client.post("/search", json={"query": "美联储加息", "mode": "dense", "top_k": 6}).json(),
                "classify": client.post("/classify", json={"inputs": NEWS, "raw_scores": True}).json()}
    torch_answers, onnx_answers = answers["torch"], answers["onnx"]
    assert torch_answers["backends"] == ["torch", "torch"] and onnx_answers["backends"] == ["onnx", "onnx"]
    assert cosines(torch_answers["embed"], onnx_answers["embed"]).min() >= 0.99999
    torch_hits, onnx_hits = torch_answers["search"]["hits"], onnx_answers["search"]["hits"]
    assert [h["id"] for h in onnx_hits] == [h["id"] for h in torch_hits]
    assert [h["score"] for h in onnx_hits] == pytest.approx([h["score"] for h in torch_hits], abs=1e-5)
    for got, expected in zip(onnx_answers["classify"], torch_answers["classify"]):
        assert {i["label"]: i["score"] for i in got} == pytest.approx({i["label"]: i["score"] for i in expected},
                                                                      abs=1e-4)
    with pytest.raises(ConfigError, match="holds a onnx model, not torch"):
        ServeArguments(retriever=str(exported["retriever_onnx"]), backend="torch")
    with pytest.raises(ConfigError, match="not quantized at load time"):
        from finbert2.serve.models import Embedder

        Embedder(str(exported["retriever_onnx"]), dtype="int8")


@pytest.fixture(scope="module")
def exported_reranker(exported, tiny_tokenizer_dir, tmp_path_factory):
    """A tiny cross-encoder, its ONNX fp32 export (checked to agree exactly on every query's top 10) and its
    OpenVINO static-int8 export calibrated on (query, pos, neg) rows."""
    from serve_support import make_reranker

    root = tmp_path_factory.mktemp("export_reranker")
    source = make_reranker(tiny_tokenizer_dir, root / "reranker")
    triples = root / "mined.jsonl"
    write_jsonl(triples, [{"query": t[:12], "pos": [t], "neg": [NEWS[(i + 1) % len(NEWS)], NEWS[(i + 2) % len(NEWS)]]}
                          for i, t in enumerate(NEWS)])
    check = ["--check", str(exported["check_retrieval"]), "--check_top_k", "6"]
    assert finbert2_main(["export", str(source), str(root / "onnx"), *check, "--min_agreement", "1"]) == 0
    assert finbert2_main(["export", str(source), str(root / "ov_int8"), "--format", "openvino", "--quantize",
                          "int8-static", "--calibration_data", str(triples), "--max_length", "24", *check]) == 0
    return {"source": source, "onnx": root / "onnx", "ov_int8": root / "ov_int8", "triples": triples}


def test_reranker_export_scores_like_torch_with_pair_segments_behind_its_check(exported_reranker):
    from finbert2.export.runtime import load_exported
    from finbert2.rerank.modeling import CrossEncoderScorer, pair_token_types

    query, passages = "美联储加息对科技股的影响", NEWS + ["美联储" * 30]
    torch_scores = CrossEncoderScorer.from_pretrained(str(exported_reranker["source"])).score(query, passages, raw=True)
    onnx_scorer = CrossEncoderScorer.from_pretrained(str(exported_reranker["onnx"]))
    # tight: the tiny model's segment embeddings move its logits by ~5e-6 (checked below)
    np.testing.assert_allclose(onnx_scorer.score(query, passages, raw=True), torch_scores, rtol=0, atol=1e-6)
    assert len(set(np.round(torch_scores, 4))) > 1  # not a comparison of constant scores
    report = report_of(exported_reranker["onnx"])
    check = report["check"]
    assert report["kind"] == "reranker" and report["passed"] and report["model_file"] == "onnx/model.onnx"
    assert check["metric"] == "ndcg_at_10" and check["top_k"] == 6 and check["queries"] == len(NEWS)
    assert check["label_agreement"] == 1.0 and check["max_abs_logit_difference"] < 1e-4 and abs(check["drop"]) < 1e-9
    assert check["source_ms_per_query"] > 0 and check["exported_ms_per_query"] > 0
    # The pair's segment ids reach the graph: all-zero segments (a single text's) give other logits.
    model = load_exported(exported_reranker["onnx"])
    rows = onnx_scorer.pair_rows([query], [NEWS[0]])
    ids, mask = torch.tensor(rows), torch.ones(1, len(rows[0]), dtype=torch.long)
    types = pair_token_types(rows, onnx_scorer.tokenizer.sep_token_id)
    assert onnx_scorer.token_types and types.sum() > 0  # a BERT tokenizer: the passage is segment 1
    paired, unpaired = model(ids, mask, token_type_ids=types).logits, model(ids, mask).logits
    expected = CrossEncoderScorer.from_pretrained(str(exported_reranker["source"])).score(query, [NEWS[0]], raw=True)[0]
    assert abs(float(paired[0, 0]) - expected) < 1e-7 < 1e-6 < abs(float(unpaired[0, 0]) - expected)
    # --max_length: the calibration, the check and the exported folder's default cut pairs there
    assert onnx_scorer.max_length == 512 and report["max_length"] == 512
    int8 = report_of(exported_reranker["ov_int8"])
    assert int8["max_length"] == 24 and CrossEncoderScorer.from_pretrained(str(exported_reranker["ov_int8"])).max_length == 24
    assert int8["kind"] == "reranker" and int8["passed"]
    assert int8["model_file"] == "openvino/openvino_model_qint8_quantized.xml" and int8["check"]["drop"] <= 0.01
    torch_scores = CrossEncoderScorer.from_pretrained(str(exported_reranker["source"]), max_length=24).score(
        query, passages, raw=True)
    int8_scores = CrossEncoderScorer.from_pretrained(str(exported_reranker["ov_int8"])).score(query, passages, raw=True)
    assert 0 < np.abs(int8_scores - torch_scores).max() < 0.05  # int8 is close, not exact


def test_rerank_evaluate_and_serve_take_the_exported_reranker(exported, exported_reranker, tmp_path):
    from fastapi.testclient import TestClient

    from finbert2.errors import ConfigError
    from finbert2.rerank.modeling import CrossEncoderScorer
    from finbert2.serve.app import create_app
    from finbert2.serve.args import ServeArguments

    assert finbert2_main(["retrieve", "evaluate", "--eval_data", str(exported["check_retrieval"]), "--models", "bm25",
                          "--rerank", str(exported_reranker["source"]), str(exported_reranker["onnx"]),
                          "--rerank_top_k", "6", "--output_dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["bm25+onnx_ndcg_at_10"] == pytest.approx(metrics["bm25+reranker_ndcg_at_10"], abs=1e-9)
    with pytest.raises(ConfigError, match="not quantized at load time"):
        CrossEncoderScorer.from_pretrained(str(exported_reranker["onnx"]), dtype="int8")
    with pytest.raises(ConfigError, match="holds a onnx model, not torch"):
        ServeArguments(reranker=str(exported_reranker["onnx"]), backend="torch")
    answers = {}
    for name in ("source", "onnx"):
        with TestClient(create_app(ServeArguments(reranker=str(exported_reranker[name])))) as client:
            for _ in range(600):
                if client.get("/ready").status_code == 200:
                    break
                __import__("time").sleep(0.05)
            info = client.get("/info").json()["models"]
            body = {"query": "美联储加息", "texts": NEWS, "raw_scores": True}
            answers[name] = ([m["backend"] for m in info], client.post("/rerank", json=body).json())
    assert answers["source"][0] == ["torch"] and answers["onnx"][0] == ["onnx"]
    assert [r["index"] for r in answers["onnx"][1]] == [r["index"] for r in answers["source"][1]]
    assert [r["score"] for r in answers["onnx"][1]] == pytest.approx([r["score"] for r in answers["source"][1]], abs=1e-4)


def test_keep_layers_copies_the_chosen_layers_and_leaves_the_source(exported):
    import torch

    from finbert2.errors import ConfigError
    from finbert2.export.prune import keep_layers
    from finbert2.retrieve.encoder import load_encoder_model

    source = load_encoder_model(str(exported["retriever"]))
    student = keep_layers(source, [1])
    assert len(source.encoder.layer) == 2 and len(student.encoder.layer) == 1
    assert student.config.num_hidden_layers == 1 and source.config.num_hidden_layers == 2
    for (name, got), expected in zip(student.encoder.layer[0].state_dict().items(),
                                     source.encoder.layer[1].state_dict().values()):
        assert torch.equal(got, expected), name
    with pytest.raises(ConfigError, match="has 2 layers"):
        keep_layers(source, [0, 2])


def test_prune_distils_to_the_source_vectors_behind_the_check(exported, tmp_path, capsys):
    from finbert2.precision import resolve_bf16
    from finbert2.retrieve.encoder import DenseEncoder

    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"text": t[:k]} for t in NEWS for k in (10, 20, 40)])
    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, [{"query": t[:8] + "？"} for t in NEWS])
    common = ["--keep_layers", "1", "--train_data", str(corpus), "--query_data", str(questions), "--max_steps", "20", "--learning_rate", "1e-3",
              "--per_device_train_batch_size", "6", "--max_length", "48", "--check", str(exported["check_retrieval"])]
    out = tmp_path / "pruned"
    assert finbert2_main(["prune", str(exported["retriever"]), str(out), *common, "--max_drop", "1"]) == 0
    report = report_of(out)
    assert report["passed"] and report["pruned_layers"] == [1] and report["source_layers"] == 2
    assert report["last_loss"] < report["first_loss"]  # the student moved toward the teacher's vectors
    assert (report["distillation_texts"], report["distillation_queries"]) == (3 * len(NEWS), len(NEWS))
    assert report["distillation_precision"] == ("bf16" if resolve_bf16("auto").bf16 else "fp32")  # --bf16 auto
    student = DenseEncoder.from_pretrained(str(out))
    assert student.model.config.num_hidden_layers == 1 and len(student.model.encoder.layer) == 1
    assert (student.pooling, student.passage_instruction) == ("mean", "passage: ")  # the source's settings
    vectors = student.encode_passages(NEWS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    rejected = tmp_path / "rejected"
    # No student of fewer layers keeps every vector within 1e-7 of the source's: a gate it cannot meet.
    assert finbert2_main(["prune", str(exported["retriever"]), str(rejected), *common, "--max_steps", "1",
                          "--min_cosine", "0.9999999"]) == 2
    assert "min cosine" in capsys.readouterr().err
    assert [p.name for p in rejected.iterdir()] == ["export_report.json"]
    for bad, message in (("1,0", "distinct increasing"), ("a", "comma-separated layer indices")):
        assert finbert2_main(["prune", str(exported["retriever"]), str(tmp_path / "x"), *common[2:],
                              "--keep_layers", bad]) == 2
        assert message in capsys.readouterr().err
    assert finbert2_main(["prune", str(exported["classifier"]), str(tmp_path / "x"), *common]) == 2
    assert "takes a torch retriever folder" in capsys.readouterr().err


def test_prune_losses_are_zero_for_the_teacher_itself_and_match_hand_values(exported):
    from finbert2.export.prune import hidden_state_loss, keep_layers, layer_targets, score_loss
    from finbert2.retrieve.encoder import load_encoder_model, pad_batch

    # kept layer k learns the teacher's states after layer keep[k+1]-1 (hidden_states index keep[k+1])
    assert layer_targets([0, 2, 4, 6, 8, 10], 12) == [2, 4, 6, 8, 10]
    assert layer_targets([0, 1], 2) == [1] and layer_targets([1], 2) == []
    teacher = load_encoder_model(str(exported["retriever"])).eval()
    student = keep_layers(teacher, [0, 1])  # every layer kept: the student is the teacher
    ids, mask = pad_batch([[2, 15, 16, 3], [2, 17, 3]], 0)
    with torch.no_grad():
        taught = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        states = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        wanted = [taught[t] for t in layer_targets([0, 1], 2)]
        assert float(hidden_state_loss(states, wanted, mask)) == pytest.approx(0, abs=1e-10)
        # a student whose states are zero scores 1 (the MSE is relative to the target's mean square)
        zeros = [torch.zeros_like(x) for x in states]
        assert float(hidden_state_loss(zeros, wanted, mask)) == pytest.approx(1.0)
        # padding is left out: changing a padded position's states changes nothing
        moved = [x.clone() for x in states]
        moved[1][1, 3] += 100.0
        assert float(hidden_state_loss(moved, wanted, mask)) == pytest.approx(0, abs=1e-10)
        # the off-by-one mapping (states after layer keep[k+1], one too deep) is not zero
        assert float(hidden_state_loss(states, [taught[2]], mask)) > 1e-5  # (a random layer moves states little)

    # KL(teacher || student) of softmax(cos / t): one query, two passages, by hand
    q, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    student_p = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # the student ranks them the other way round
    t = 0.5
    want = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    got = np.exp([0.0, 2.0]) / np.exp([0.0, 2.0]).sum()
    expected = float((want * np.log(want / got)).sum())
    assert float(score_loss(q, student_p, q, p, t)) == pytest.approx(expected, rel=1e-5)
    assert float(score_loss(q, 3 * p, q, p, t)) == pytest.approx(0, abs=1e-7)  # cosines: the length is ignored


def test_prune_with_layer_and_score_losses_distils_each_part(exported, tiny_tokenizer_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from finbert2.export.prune import hidden_state_loss, keep_layers, score_loss
    from finbert2.retrieve.encoder import load_encoder_model, pad_batch, pool
    from finbert2.training import LOSS_LOG_FILE, LOSS_PLOT_FILE, read_loss_log

    source = make_retriever(tiny_tokenizer_dir, tmp_path / "three_layers", prompts=E5_PROMPTS, layers=3)
    # A random tiny layer barely moves the states (the residual dominates): give the dropped layer 1 weight, so
    # that the undistilled student starts measurably away from the teacher.
    model = load_encoder_model(str(source))
    with torch.no_grad():
        for module in (model.encoder.layer[1].attention.output.dense, model.encoder.layer[1].output.dense):
            module.weight.mul_(8)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(source)
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"text": t[:k]} for t in NEWS for k in (10, 20, 40)])
    rows = tmp_path / "train.jsonl"  # retrieval training rows: each query brings its positive and a negative
    write_jsonl(rows, [{"query": t[:8] + "？", "pos": [t], "neg": [NEWS[(i + 1) % len(NEWS)]]}
                       for i, t in enumerate(NEWS)])
    common = ["--keep_layers", "0,2", "--train_data", str(corpus), "--query_data", str(rows), "--max_steps", "25",
              "--learning_rate", "3e-4", "--per_device_train_batch_size", "8", "--query_share", "0.25",
              "--max_length", "48", "--bf16", "false", "--hidden_loss_weight", "1", "--score_loss_weight", "1"]
    out = tmp_path / "pruned"
    assert finbert2_main(["prune", str(source), str(out), *common]) == 0
    report = report_of(out)
    assert report["distillation_query_passages"] == 2 * len(NEWS)
    first = report["first_losses"]
    assert set(first) == {"loss", "pooled_mse", "hidden_mse", "score_kl"}
    assert first["loss"] == pytest.approx(first["pooled_mse"] + first["hidden_mse"] + first["score_kl"], rel=1e-5)
    # Every part, measured on one fixed batch in eval mode, is smaller for the distilled student than for its
    # start (the same layers, undistilled).
    teacher, start = load_encoder_model(str(source)).eval(), keep_layers(load_encoder_model(str(source)), [0, 2]).eval()
    distilled = load_encoder_model(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    rows = tokenizer(["passage: " + t for t in NEWS] + ["query: " + t[:8] + "？" for t in NEWS])["input_ids"]
    ids, mask = pad_batch(rows, tokenizer.pad_token_id)

    def parts(model):
        with torch.no_grad():
            want = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            got = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        t, s = pool(want.last_hidden_state, mask, "mean"), pool(got.last_hidden_state, mask, "mean")
        n = len(NEWS)
        return (float(torch.nn.functional.mse_loss(s, t)),
                float(hidden_state_loss(got.hidden_states, [want.hidden_states[2]], mask)),
                float(score_loss(s[n:], s[:n], t[n:], t[:n], 0.02)))

    for name, before, after in zip(("pooled", "hidden", "score"), parts(start), parts(distilled)):
        assert after < before, name
    log = read_loss_log(out / LOSS_LOG_FILE)
    assert {"loss", "pooled_mse", "hidden_mse", "score_kl"} <= set(log) and len(log["score_kl"]) == 25
    assert (out / LOSS_PLOT_FILE).is_file()
    # the score loss needs queries; a malformed pos list names the file and line
    assert finbert2_main(["prune", str(source), str(tmp_path / "x"), *common[:4], "--score_loss_weight", "1"]) == 2
    assert "--score_loss_weight needs --query_data" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"query": "问", "pos": ["文"]}, {"query": "问", "pos": [1, 2]}])
    assert finbert2_main(["prune", str(source), str(tmp_path / "y"), *common[:4], "--query_data", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "2" in err and "'pos' must be a list of texts" in err
    assert not (tmp_path / "y").exists()


def test_an_interrupted_prune_resumes_from_its_checkpoint_to_the_same_student(exported, tmp_path, monkeypatch, capsys,
                                                                              caplog):
    import finbert2.export.prune as prune
    from safetensors.torch import load_file

    from finbert2.training import LOSS_LOG_FILE, LOSS_PLOT_FILE, read_loss_log

    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"text": t[:k]} for t in NEWS for k in (10, 20, 40)])
    common = ["--keep_layers", "1", "--train_data", str(corpus), "--max_steps", "6", "--save_steps", "2",
              "--learning_rate", "1e-3", "--per_device_train_batch_size", "4", "--max_length", "32", "--bf16", "false"]
    straight = tmp_path / "straight"
    assert finbert2_main(["prune", str(exported["retriever"]), str(straight), *common]) == 0
    assert not prune.checkpoint_dir(straight).exists()  # removed once the model is written

    saved_steps = []
    real_save = prune.save_checkpoint

    def save_then_die_at_step_4(folder, student, optimizer, schedule, losses, *rest):
        real_save(folder, student, optimizer, schedule, losses, *rest)
        saved_steps.append(len(losses))
        if len(losses) == 4:
            raise KeyboardInterrupt  # a kill right after the second checkpoint

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(prune, "save_checkpoint", save_then_die_at_step_4)
    assert finbert2_main(["prune", str(exported["retriever"]), str(resumed), *common]) == 130  # Ctrl-C's status
    assert saved_steps == [2, 4] and not resumed.exists()  # nothing that looks finished
    monkeypatch.undo()
    # Started again with other arguments: refused, naming what changed; the checkpoint is kept.
    assert finbert2_main(["prune", str(exported["retriever"]), str(resumed), *common, "--learning_rate", "2e-3"]) == 2
    assert "learning_rate was 0.001, now 0.002" in capsys.readouterr().err
    assert finbert2_main(["prune", str(exported["retriever"]), str(resumed), *common]) == 0
    assert "resuming the distillation from step 4" in caplog.text

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    losses = read_loss_log(resumed / LOSS_LOG_FILE)["loss"]
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert losses == read_loss_log(straight / LOSS_LOG_FILE)["loss"]
    assert (resumed / LOSS_PLOT_FILE).is_file() and not prune.checkpoint_dir(resumed).exists()

    # A kill between removing the old checkpoint and renaming the new one: the new one is found under its
    # temporary name.
    again = tmp_path / "again"
    monkeypatch.setattr(prune, "save_checkpoint", save_then_die_at_step_4)
    assert finbert2_main(["prune", str(exported["retriever"]), str(again), *common]) == 130
    monkeypatch.undo()
    kept, temporary = prune.checkpoint_folders(prune.checkpoint_dir(again))
    kept.rename(temporary)
    caplog.clear()
    assert finbert2_main(["prune", str(exported["retriever"]), str(again), *common]) == 0
    assert f"resuming the distillation from step 4 ({temporary})" in caplog.text
    c = load_file(again / "model.safetensors")
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
