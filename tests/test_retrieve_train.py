"""Fine-tuning, output formats, evaluation, mining, indexing and search on tiny models and demo data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO_DIR, REPO_ROOT

RETRIEVAL = DEMO_DIR / "retrieval"


def _small_eval_folder(tmp_path: Path, n_queries: int = 40) -> Path:
    """The first queries of the demo evaluation folder with their documents plus 160 distractors."""
    src = RETRIEVAL / "eval"
    queries = [json.loads(l) for l in (src / "test_queries.jsonl").read_text(encoding="utf-8").splitlines()][:n_queries]
    qids = {q["id"] for q in queries}
    qrels = [json.loads(l) for l in (src / "test_qrels.jsonl").read_text(encoding="utf-8").splitlines()]
    qrels = [r for r in qrels if r["qid"] in qids]
    wanted = {r["docid"] for r in qrels}
    corpus = [json.loads(l) for l in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    corpus = [d for i, d in enumerate(corpus) if d["id"] in wanted or i < 160]
    out = tmp_path / "eval_small"
    out.mkdir()
    for name, rows in [("corpus", corpus), ("test_queries", queries), ("test_qrels", qrels)]:
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
    return out


def _train_args(tiny_bert_dir, output_dir, eval_dir, **overrides) -> list[str]:
    args = {
        "model_name_or_path": tiny_bert_dir, "train_data": RETRIEVAL / "train.jsonl", "eval_data": eval_dir,
        "output_dir": output_dir, "max_train_samples": 96, "train_group_size": 3, "query_max_len": 48,
        "passage_max_len": 80, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "temperature": 0.05,
        "max_steps": 36, "eval_strategy": "steps", "eval_steps": 18, "save_steps": 18, "save_total_limit": 2,
        "logging_steps": 6, "pooling": "mean", "use_cpu": True, "seed": 7, "report_to": "none", "disable_tqdm": True,
        "warmup_steps": 0, "dataloader_num_workers": 0,
    }
    args.update(overrides)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


@pytest.fixture(scope="module")
def trained_dir(tiny_bert_dir, tmp_path_factory):
    from finbert2.retrieve.cli import main

    tmp = tmp_path_factory.mktemp("retriever")
    eval_dir = _small_eval_folder(tmp)
    out = tmp / "run"
    assert main(["train", *_train_args(tiny_bert_dir, out, eval_dir)]) == 0
    return out, eval_dir


def test_training_writes_the_run_contract(trained_dir):
    out, eval_dir = trained_dir
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("train_loss", "eval_ndcg_at_10", "eval_mrr_at_10", "eval_recall_at_100", "best_metric"):
        assert key in metrics, key
    assert metrics["eval_ndcg_at_10"] == pytest.approx(metrics["best_metric"])  # the kept model is the best
    assert (out / "run_config.json").is_file() and (out / "loss.png").is_file() and (out / "run.log").is_file()
    log = (out / "loss_log.csv").read_text().splitlines()
    losses = [float(row.split(",")[2]) for row in log[1:] if row.split(",")[2]]
    # A random encoder learns to tell passages apart: the loss falls well below chance, the vectors spread
    # out and validation beats the untrained start. (CLS pooling on this random 2 x 64 encoder does not
    # move off chance in 36 steps; its [CLS] vector is nearly the same for every text.)
    assert len(losses) == 6 and losses[-1] < 0.7 * min(losses[0], metrics["chance_loss"])
    assert not metrics["collapsed"] and metrics["passage_mean_cosine"] < 0.9
    assert metrics["eval_ndcg_at_10"] > metrics["initial_eval_ndcg_at_10"] + 0.05
    # The validation curve is logged beside the loss (the best point is the kept model's) and plotted.
    from finbert2.training import read_loss_log

    curve = read_loss_log(out / "loss_log.csv")["eval_ndcg_at_10"]
    assert len(curve) >= 2 and max(v for _, v in curve) == pytest.approx(metrics["best_metric"])
    assert (out / "validation.png").is_file()
    # The reported scores (taken from the log of the kept checkpoint) are those of the saved model.
    from finbert2.data import read_retrieval_eval
    from finbert2.retrieve import DenseEncoder
    from finbert2.retrieve.evaluate import dense_evaluation

    saved, _, _ = dense_evaluation(DenseEncoder.from_pretrained(str(out), max_length=80), read_retrieval_eval(eval_dir))
    assert saved["ndcg_at_10"] == pytest.approx(metrics["eval_ndcg_at_10"], abs=1e-6)
    assert saved["recall_at_100"] == pytest.approx(metrics["eval_recall_at_100"], abs=1e-6)
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["arguments"]["query_instruction_for_retrieval"] == "为这个句子生成表示以用于检索相关文章："
    assert run_config["arguments"]["temperature"] == 0.05


def test_the_kept_models_scores_are_read_from_the_log():
    from types import SimpleNamespace

    from finbert2.training import logged_evaluation

    history = [{"loss": 3.0, "step": 2}, {"eval_ndcg_at_10": 0.4, "eval_map": 0.3, "epoch": 1.0, "step": 18},
               {"loss": 2.0, "step": 36}, {"eval_ndcg_at_10": 0.35, "eval_map": 0.2, "epoch": 2.0, "step": 36}]
    state = SimpleNamespace(log_history=history, best_model_checkpoint="run/checkpoint-18", global_step=36)
    best, last = SimpleNamespace(load_best_model_at_end=True), SimpleNamespace(load_best_model_at_end=False)
    assert logged_evaluation(state, best) == {"eval_ndcg_at_10": 0.4, "eval_map": 0.3, "epoch": 1.0}
    assert logged_evaluation(state, last) == {"eval_ndcg_at_10": 0.35, "eval_map": 0.2, "epoch": 2.0}
    state.global_step = 40  # the last steps were never evaluated: the caller evaluates
    assert logged_evaluation(state, last) is None


def test_output_is_hf_and_sentence_transformers_with_same_vectors(trained_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from finbert2.retrieve import QUERY_INSTRUCTION, DenseEncoder

    out, _ = trained_dir
    AutoModel.from_pretrained(out)  # a plain HF folder
    ours = DenseEncoder.from_pretrained(str(out), max_length=80)
    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts["query"] == QUERY_INSTRUCTION
    queries = ["贵州茅台2023年营业收入多少", "央行降准"]
    passages = [json.loads(l)["text"] for l in (RETRIEVAL / "candidates.jsonl").read_text().splitlines()[:6]]
    ours_q, ours_p = ours.encode_queries(queries), ours.encode_passages(passages)
    st_q = st.encode([QUERY_INSTRUCTION + q for q in queries])  # upstream README style
    st_q2 = st.encode_query(queries)  # the recorded prompt
    st_p = st.encode(passages)
    for a, b in [(ours_q, st_q), (ours_q, st_q2), (ours_p, st_p)]:
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.999
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(st_p, axis=1), 1.0, atol=1e-5)  # Normalize module


def test_encoder_follows_the_pooling_a_folder_was_saved_with(tiny_bert_dir, tmp_path):
    """A mean-pooled retriever folder is encoded with mean pooling by evaluate/mine/index, as trained."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from finbert2.errors import ConfigError
    from finbert2.retrieve import DenseEncoder
    from finbert2.retrieve.encoder import save_sentence_transformer, saved_sentence_settings

    folder = tmp_path / "mean_pooled"
    shutil.copytree(tiny_bert_dir, folder)
    assert saved_sentence_settings(str(folder)) == {}  # a plain HF folder: CLS + L2, upstream's choice
    assert DenseEncoder.from_pretrained(str(folder)).pooling == "cls"
    save_sentence_transformer(folder, max_seq_length=64, pooling="mean")
    assert saved_sentence_settings(str(folder)) == {
        "pooling": "mean", "normalize": True, "prompts": {"query": "为这个句子生成表示以用于检索相关文章：", "document": ""}}
    ours = DenseEncoder.from_pretrained(str(folder), max_length=64)
    assert ours.pooling == "mean"
    texts = ["央行降准0.5个百分点", "公司发布2023年年度报告，营业收入同比增长"]
    np.testing.assert_allclose(ours.encode_passages(texts), SentenceTransformer(str(folder), device="cpu").encode(texts),
                               atol=1e-4)
    forced = DenseEncoder.from_pretrained(str(folder), pooling="cls", max_length=64)  # an explicit choice wins
    assert forced.pooling == "cls"
    assert not np.allclose(forced.encode_passages(texts), ours.encode_passages(texts), atol=1e-3)

    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "max"}')
    with pytest.raises(ConfigError, match="not supported"):
        saved_sentence_settings(str(folder))


def test_best_checkpoint_is_kept_and_rerun_refused(trained_dir, tiny_bert_dir):
    from finbert2.errors import OutputDirError
    from finbert2.retrieve.cli import main

    out, eval_dir = trained_dir
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    assert state["best_model_checkpoint"] is not None
    evals = [h["eval_ndcg_at_10"] for h in state["log_history"] if "eval_ndcg_at_10" in h]
    assert state["best_metric"] == pytest.approx(max(evals))
    with pytest.raises(OutputDirError):
        main(["train", *_train_args(tiny_bert_dir, out, eval_dir)])


def test_grad_cache_training_runs(tiny_bert_dir, tmp_path):
    from finbert2.retrieve.cli import main

    out = tmp_path / "gc"
    args = _train_args(tiny_bert_dir, out, _small_eval_folder(tmp_path), grad_cache=True, grad_cache_chunk_size=8,
                       max_steps=4, eval_steps=4, save_steps=4)
    assert main(["train", *args]) == 0
    assert json.loads((out / "metrics.json").read_text())["train_loss"] > 0


def test_bad_training_row_stops_before_any_output(tiny_bert_dir, tmp_path, run_cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "问", "pos": ["答"], "neg": ["负"]}\n{"query": "问", "pos": "答", "neg": ["负"]}\n',
                   encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli("retrieve", "train", "--model_name_or_path", tiny_bert_dir, "--train_data", bad,
                     "--output_dir", out)
    assert result.returncode == 2
    assert f"{bad}:2: field 'pos' must be a list of strings" in result.stderr
    assert not out.exists()


def test_evaluate_cli_compares_models_and_bm25(trained_dir, tiny_bert_dir, tmp_path, run_cli):
    import shutil

    out, eval_dir = trained_dir
    copy = shutil.copytree(out, tmp_path / "copy")  # the same encoder in another folder: scored once, reused
    result = run_cli("retrieve", "evaluate", "--eval_data", eval_dir, "--models", "bm25", tiny_bert_dir, out, copy,
                     "--labels", "bm25", "before", "after", "copy", "--max_length", "80", "--output_dir", tmp_path / "ev")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    table = (tmp_path / "ev" / "results.md").read_text()
    log = (tmp_path / "ev" / "run.log").read_text()
    assert "copy: the same weights, tokenizer and settings as after; its scores reused" in log
    assert "before: the same" not in log and "after: the same" not in log
    assert {k[len("copy_"):]: v for k, v in metrics.items() if k.startswith("copy_") and k != "copy_seconds"} == \
        {k[len("after_"):]: v for k, v in metrics.items() if k.startswith("after_") and k != "after_seconds"}
    for label in ("bm25", "before", "after", "copy"):
        assert f"| {label} |" in table
        assert 0 <= metrics[f"{label}_ndcg_at_10"] <= 1
        rows = (tmp_path / "ev" / "per_query" / f"{label}.jsonl").read_text().splitlines()
        assert len(rows) == 40 and "top10" in json.loads(rows[0])
    # the lexical baseline beats a random ranking (expected ndcg@10 of one relevant doc among ~200: ~0.02)
    assert metrics["bm25_ndcg_at_10"] > 0.3
    assert metrics["ndcg_at_10"] == metrics["bm25_ndcg_at_10"]  # the first model's metrics, unprefixed


def test_index_and_search_cli(trained_dir, tmp_path, run_cli):
    from finbert2.cli import run_main
    from finbert2.retrieve.cli import main

    out, _ = trained_dir
    docs = tmp_path / "docs.jsonl"
    records = [
        {"id": "r1", "title": "美联储加息对科技股估值影响分析", "company": "", "institution": "摩根士丹利",
         "industry": "科技综合", "author": "张伟", "type": "策略报告", "content": "美联储连续加息导致科技股估值回调。"},
        {"id": "r2", "title": "生猪养殖行业周期反转信号分析", "company": "牧原股份", "institution": "长江证券",
         "industry": "农林牧渔", "author": "刘洋", "type": "行业报告", "content": "能繁母猪存栏量连续下降。"},
        {"id": "r3", "text": "央行宣布下调存款准备金率0.5个百分点。"},
    ]
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    for index_type in ("flat", "ivf"):
        index_dir = tmp_path / f"index_{index_type}"
        assert run_main(main, ["index", "--model_name_or_path", str(out), "--corpus", str(docs), "--index_type",
                               index_type, "--nlist", "2", "--output_dir", str(index_dir)]) == 0
        results_file = tmp_path / f"hits_{index_type}.jsonl"
        assert run_main(main, ["search", "--index_dir", str(index_dir), "--query", "美联储加息", "央行降准",
                               "--top_k", "3", "--output_file", str(results_file)]) == 0
        rows = [json.loads(l) for l in results_file.read_text().splitlines()]
        assert [r["query"] for r in rows] == ["美联储加息", "央行降准"]
        hits = rows[0]["results"]
        if index_type == "flat":  # exact search returns every document, best first
            assert sorted(h["id"] for h in hits) == ["r1", "r2", "r3"]
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        texts = {h["id"]: h["text"] for h in hits}
        if "r1" in texts:
            assert texts["r1"].startswith("文章标题：美联储加息对科技股估值影响分析\n公司名称：\n发布机构：摩根士丹利")
    # the flat scores are the encoder's own cosine similarities
    from finbert2.retrieve import DenseEncoder
    from finbert2.retrieve.search import format_document

    enc = DenseEncoder.from_pretrained(str(out))
    q = enc.encode_queries(["美联储加息"])[0]
    p = enc.encode_passages([format_document(records[0])])[0]
    hit = next(h for h in json.loads((tmp_path / "hits_flat.jsonl").read_text().splitlines()[0])["results"]
               if h["id"] == "r1")
    assert hit["score"] == pytest.approx(float(q @ p), abs=1e-4)
    # the command line prints the ranking
    result = run_cli("retrieve", "search", "--index_dir", tmp_path / "index_flat", "--query", "美联储加息", "--top_k", "2")
    assert result.returncode == 0, result.stderr
    assert "【查询】美联储加息" in result.stdout and len(result.stdout.strip().splitlines()) == 3


def test_python_m_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "finbert2.retrieve", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "mine", "evaluate", "index", "search"):
        assert command in result.stdout


@pytest.mark.slow
def test_torchrun_two_processes_cross_device(tiny_bert_dir, tmp_path):
    """A 2-process torchrun run with cross-device negatives finishes and scores both ranks' passages."""
    out = tmp_path / "ddp"
    args = _train_args(tiny_bert_dir, out, _small_eval_folder(tmp_path), negatives_cross_device=True,
                       per_device_train_batch_size=4, max_steps=3, eval_steps=3, save_steps=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29533", "-m", "finbert2.retrieve", "train", *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # batch 4 x group 3 per rank: each query is scored against 2 x 4 x 3 passages (12 from the other rank)
    assert metrics["passages_per_query"] == 24


def test_interrupted_run_resumes_from_its_last_checkpoint(tiny_bert_dir, tmp_path):
    from finbert2.retrieve.cli import main

    out = tmp_path / "resume"
    base = dict(eval_data="", max_train_samples=32, per_device_train_batch_size=8, save_steps=2,
                eval_strategy="no", logging_steps=1)
    args = [a for a in _train_args(tiny_bert_dir, out, "", max_steps=2, **base)]
    args = [a for i, a in enumerate(args) if not (a == "--eval_data" or (i > 0 and args[i - 1] == "--eval_data"))]
    assert main(["train", *args]) == 0
    (out / "metrics.json").unlink()  # as if the run had been killed after checkpoint-2
    longer = [a if a != "2" or args[i - 1] != "--max_steps" else "4" for i, a in enumerate(args)]
    assert main(["train", *longer]) == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert "resuming from" in (out / "run.log").read_text()
    steps = [int(row.split(",")[0]) for row in (out / "loss_log.csv").read_text().splitlines()[1:]]
    assert steps[:4] == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 after the resume


def test_query_length_is_recorded_with_the_model_and_read_back(trained_dir, tiny_bert_dir, tmp_path):
    """The query limit training used (48 here) is saved beside the model; encoders loaded from the folder cut
    queries there (evaluate, mine, index and serve all load through DenseEncoder.from_pretrained)."""
    from transformers import AutoTokenizer

    from finbert2.retrieve.encoder import DenseEncoder, saved_sentence_settings
    from finbert2.retrieve.trainer import resolve_query_max_len

    out, _ = trained_dir
    assert json.loads((out / "retrieval_lengths.json").read_text()) == {"query_max_length": 48,
                                                                         "passage_max_length": 80}
    assert saved_sentence_settings(str(out))["query_max_length"] == 48
    encoder = DenseEncoder.from_pretrained(str(out), max_length=80, device="cpu")
    assert encoder.query_max_length == 48 and encoder.max_length == 80
    long_query = "营业收入" * 60
    cut = encoder.encode_queries([long_query])
    assert np.allclose(cut, encoder.encode([long_query], prompt=encoder.query_instruction, max_length=48))
    assert not np.allclose(cut, encoder.encode([long_query], prompt=encoder.query_instruction, max_length=80))
    # unset, the limit covers the longest training query (up to the passage limit); set, the cut is counted
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    queries = ["短", "一个长一点的问题是什么", "营业收入" * 100]
    lengths = [len(tokenizer(q)["input_ids"]) for q in queries]
    assert resolve_query_max_len(tokenizer, queries, None, 512) == (
        max(lengths), f"query_max_len {max(lengths)}: covers every training query (longest {max(lengths)} tokens)")
    assert resolve_query_max_len(tokenizer, queries, None, 64)[0] == 64
    # padded to multiples of 8, the automatic limit is rounded up to one (the tokenizer refuses other cuts)
    short = queries[:2]
    longest = max(lengths[:2])
    assert resolve_query_max_len(tokenizer, short, None, 512, 8)[0] == -(-longest // 8) * 8
    assert resolve_query_max_len(tokenizer, short, None, 512, 8)[0] % 8 == 0
    assert resolve_query_max_len(tokenizer, queries, 8, 512)[1] == (
        f"query_max_len 8 cuts {sum(n > 8 for n in lengths)} of 3 training queries (longest {max(lengths)} tokens)")
