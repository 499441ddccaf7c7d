"""Fin-Reranker: the listwise loss against hand-computed values, scores equal to sentence-transformers'
``CrossEncoder``, two-stage reranking of a run, mining with BM25 (and hybrid), and the CLI's errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_DIR, REPO_ROOT
from serve_support import NEWS, make_reranker, make_retriever

from finbert2.errors import ConfigError
from finbert2.rerank.modeling import CrossEncoderScorer, listwise_loss, pair_token_types, score_collapse

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory, tiny_tokenizer_dir):
    return make_reranker(tiny_tokenizer_dir, tmp_path_factory.mktemp("rerank") / "reranker")


def test_listwise_loss_is_softmax_cross_entropy_of_the_positive():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # group 1: -2 + log(e^2 + e^1 + e^0) = log(1 + e^-1 + e^-2); group 2: log 3 (chance)
    expected = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(3)) / 2
    assert listwise_loss(scores).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.7531, abs=1e-4)
    with pytest.raises(ValueError, match="groups, passages"):
        listwise_loss(torch.zeros(4))


def test_score_collapse_flags_scores_that_do_not_separate():
    spread, reason = score_collapse(np.full(40, 0.31) + np.linspace(0, 1e-5, 40))
    assert spread < 1e-3 and "score collapse" in reason
    assert score_collapse(np.array([0.1, 2.0, -1.0]))[1] is None


def test_pair_segments_equal_the_tokenizers(reranker_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reranker_dir)
    encoded = tokenizer(["央行", "美联储加息"], [NEWS[0], NEWS[2]], padding=True)
    types = pair_token_types([ids[:sum(mask)] for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])],
                             tokenizer.sep_token_id)
    assert types.tolist() == encoded["token_type_ids"]


def test_scores_equal_sentence_transformers_cross_encoder(reranker_dir):
    from sentence_transformers import CrossEncoder

    query = "美联储加息对科技股的影响"
    passages = NEWS + ["美联储" * 30, "加息"]  # lengths differ: batches are cut by a small token budget
    scorer = CrossEncoderScorer.from_pretrained(str(reranker_dir), batch_tokens=120)
    reference = CrossEncoder(str(reranker_dir), device="cpu")
    expected = reference.predict([(query, p) for p in passages], batch_size=3)
    np.testing.assert_allclose(scorer.score(query, passages), expected, atol=1e-5)
    raw = reference.predict([(query, p) for p in passages], activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(scorer.score(query, passages, raw=True), raw, atol=1e-5)
    assert len(set(np.round(raw, 4))) > 1  # the comparison is not between constant scores


def test_a_classifier_folder_is_refused(tiny_tokenizer_dir, tmp_path):
    from serve_support import make_classifier

    folder = make_classifier(tiny_tokenizer_dir, tmp_path / "sentiment", ["消极", "积极", "中性"])
    with pytest.raises(ConfigError, match="cannot load|shapes"):
        CrossEncoderScorer.from_pretrained(str(folder))


class ScriptedScorer:
    """Scores a passage by the number of times '加息' occurs in it."""

    def score(self, query, passages, raw=False):
        return np.array([p.count("加息") for p in passages], dtype=np.float32)


def test_rerank_run_reorders_the_top_k_and_keeps_the_tail():
    from finbert2.data import RetrievalEvalData
    from finbert2.rerank.evaluate import rerank_run
    from finbert2.retrieve.metrics import top_k

    corpus = {"a": {"text": "无关"}, "b": {"text": "加息"}, "c": {"text": "加息加息"}, "d": {"text": "加息" * 3}}
    data = RetrievalEvalData(corpus=corpus, queries={"q": "加息"}, qrels={"q": {"c": 1}})
    first = {"q": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}}
    run, seconds = rerank_run(ScriptedScorer(), data, first, k=3)
    assert list(top_k(run, 10)["q"]) == ["c", "b", "a", "d"]  # top 3 by the scorer, then d (first-stage order)
    assert len(seconds) == 1 and seconds[0] >= 0


def test_long_passages_are_scored_by_the_window_that_holds_the_query_words():
    from finbert2.data import RetrievalEvalData
    from finbert2.rerank.evaluate import matched_window, rerank_runs
    from finbert2.retrieve.search import jieba_tokens

    filler = "公司治理结构" * 10  # 60 characters without a query word
    text = filler + "央行宣布加息" + filler + "央行" + filler
    words = set(jieba_tokens("央行加息"))
    window = matched_window(words, text, 30)
    assert len(window) == 30 and "央行宣布加息" in window  # both words, not the window holding only 央行
    assert matched_window(words, "短文本", 30) == "短文本"  # no longer than the window: the text itself
    assert matched_window(words, filler * 2, 30) == (filler * 2)[:30]  # no query word anywhere: the head

    class Recording:
        def __init__(self):
            self.passages = []

        def score(self, query, passages, raw=False):
            self.passages += passages
            return np.zeros(len(passages), dtype=np.float32)

    data = RetrievalEvalData(corpus={"long": {"text": text}, "short": {"text": "加息"}}, queries={"q": "央行加息"},
                             qrels={"q": {"long": 1}})
    scorer = Recording()
    rerank_runs(scorer, data, {"q": {"long": 2.0, "short": 1.0}}, k=2, window_chars=30)
    assert scorer.passages == [window, "加息"]
    scorer = Recording()
    rerank_runs(scorer, data, {"q": {"long": 2.0, "short": 1.0}}, k=2)
    assert scorer.passages == [text, "加息"]  # by default the whole passage (the scorer cuts it at its length)


def test_interpolation_mixes_min_max_normalised_reranker_and_first_stage_scores():
    from finbert2.data import RetrievalEvalData
    from finbert2.rerank.evaluate import interpolated, rerank_runs
    from finbert2.retrieve.metrics import top_k

    corpus = {"a": {"text": "无关"}, "b": {"text": "加息"}, "c": {"text": "加息加息"}, "d": {"text": "加息" * 3}}
    data = RetrievalEvalData(corpus=corpus, queries={"q": "加息"}, qrels={"q": {"c": 1}})
    first = {"q": {"a": 4.0, "b": 3.9, "c": 1.0, "d": 0.5}}
    # head a, b, c: reranker 0, 1, 2 -> 0, 0.5, 1; first stage 4, 3.9, 1 -> 1, 29/30, 0
    np.testing.assert_allclose(interpolated(np.array([0.0, 1.0, 2.0]), np.array([4.0, 3.9, 1.0]), 0.5),
                               [0.5, 0.5 * 0.5 + 0.5 * 29 / 30, 0.5])
    runs, seconds = rerank_runs(ScriptedScorer(), data, first, k=3, alphas=(1.0, 0.8, 0.5, 0.0))
    assert len(seconds) == 1  # one scoring serves every alpha
    orders = {alpha: list(top_k(run, 10)["q"]) for alpha, run in runs.items()}
    assert orders[1.0] == ["c", "b", "a", "d"]  # the reranker alone
    assert orders[0.8] == ["c", "b", "a", "d"]  # 0.2, 0.593, 0.8
    assert orders[0.5] == ["b", "a", "c", "d"]  # 0.5, 0.733, 0.5: the tie keeps the first-stage order
    assert orders[0.0] == ["a", "b", "c", "d"]  # the first stage's order
    np.testing.assert_array_equal(interpolated(np.array([3.0, 3.0]), np.array([1.0, 1.0]), 0.5), [0.0, 0.0])


def test_mining_with_bm25_excludes_every_positive_of_the_query_text():
    from finbert2.retrieve.mine_first_stage import mine_with_first_stage
    from finbert2.retrieve.search import BM25Retriever

    rows = [{"query": "茅台净利润增长", "pos": ["贵州茅台发布年报，净利润同比增长百分之十九。"]},
            {"query": "茅台净利润增长", "pos": ["茅台 净利润 增长 创新高，分红提升。"]},  # same question, other answer
            {"query": "美联储加息", "pos": [NEWS[2]]}]
    pool = ["贵州茅台发布年报， 净利润同比增长百分之十九。",  # a positive up to whitespace
            "茅台净利润增长放缓，股价下跌。", "五粮液净利润增长。", NEWS[0], NEWS[1], NEWS[3], NEWS[4]]
    mined, stats = mine_with_first_stage(rows, pool, 0, 10, 3, seed=0)
    positives = {"".join(p.split()) for row in rows[:2] for p in row["pos"]}
    for row in mined[:2]:
        assert row["neg"] and not positives & {"".join(n.split()) for n in row["neg"]}
    assert NEWS[2] not in mined[2]["neg"]
    assert stats["first_stage"] == "bm25" and stats["queries"] == 3
    # rank range 0-1 and one negative: BM25's best passage that is no positive of the question
    best, _ = mine_with_first_stage(rows[:1] + rows[1:2], pool, 0, 1, 1, seed=0)
    texts = pool[1:] + [r["pos"][0] for r in rows]
    ranking = BM25Retriever([str(i) for i in range(len(texts))], texts).run(["q"], [rows[0]["query"]], 10)["q"]
    top = [texts[int(d)] for d in sorted(ranking, key=lambda d: -ranking[d])
           if "".join(texts[int(d)].split()) not in positives]
    assert best[0]["neg"] == [top[0]] == ["茅台净利润增长放缓，股价下跌。"]


def test_mine_command_with_bm25_and_hybrid(tmp_path, tiny_tokenizer_dir):
    from finbert2.retrieve.args import MineArguments
    from finbert2.retrieve.mine import run_mining

    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"query": "央行降准", "pos": [NEWS[0]]}, {"query": "美联储加息", "pos": [NEWS[2]]}]), encoding="utf-8")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in NEWS), encoding="utf-8")
    stats = run_mining(MineArguments(model_name_or_path="bm25", input_file=str(queries), candidate_pool=str(pool),
                                     output_file=str(tmp_path / "bm25.jsonl"), range_for_sampling="0-6",
                                     negative_number=2, fill_random=True))  # BM25 ranks only passages sharing a word
    assert stats["first_stage"] == "bm25"
    retriever = make_retriever(tiny_tokenizer_dir, tmp_path / "retriever")
    stats = run_mining(MineArguments(model_name_or_path=str(retriever), hybrid=True, input_file=str(queries),
                                     candidate_pool=str(pool), output_file=str(tmp_path / "hybrid.jsonl"),
                                     range_for_sampling="0-6", negative_number=2))
    assert stats["first_stage"] == "hybrid"
    for name in ("bm25.jsonl", "hybrid.jsonl"):
        rows = [json.loads(line) for line in (tmp_path / name).read_text(encoding="utf-8").splitlines()]
        assert [len(r["neg"]) for r in rows] == [2, 2]
        assert all(r["pos"][0] not in r["neg"] for r in rows)
    with pytest.raises(ConfigError, match="do not apply to BM25"):
        MineArguments(model_name_or_path="bm25", input_file="x", output_file="y", margin=0.1)


def test_predict_orders_passages_and_rejects_bad_rows(run_cli, reranker_dir, tmp_path):
    good = tmp_path / "in.jsonl"
    good.write_text(json.dumps({"query": "央行", "texts": NEWS[:3]}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = run_cli("rerank", "predict", "--model_name_or_path", reranker_dir, "--input_file", good,
                     "--output_file", out)
    assert result.returncode == 0, result.stderr
    ranking = json.loads(out.read_text(encoding="utf-8"))["ranking"]
    expected = CrossEncoderScorer.from_pretrained(str(reranker_dir)).score("央行", NEWS[:3])
    assert [r["index"] for r in ranking] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose([r["score"] for r in ranking], np.sort(expected)[::-1], atol=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "texts": ["x"]}\n{"query": "b", "texts": "x"}\n', encoding="utf-8")
    result = run_cli("rerank", "predict", "--model_name_or_path", reranker_dir, "--input_file", bad,
                     "--output_file", tmp_path / "never.jsonl")
    assert result.returncode == 2 and f"{bad}:2:" in result.stderr and "texts" in result.stderr
    assert not (tmp_path / "never.jsonl").exists()


def test_evaluate_adds_a_reranked_row_per_first_stage(tmp_path, reranker_dir, tiny_tokenizer_dir, monkeypatch):
    from finbert2.retrieve.args import EvaluateArguments
    from finbert2.retrieve.evaluate import run_evaluation
    from finbert2.run import RunArguments

    folder = tmp_path / "eval"
    folder.mkdir()
    lines = {"corpus.jsonl": [{"id": f"d{i}", "title": "", "text": t} for i, t in enumerate(NEWS)],
             "test_queries.jsonl": [{"id": "q1", "text": "央行降准"}, {"id": "q2", "text": "茅台净利润"}],
             "test_qrels.jsonl": [{"qid": "q1", "docid": "d0", "relevance": 1},
                                  {"qid": "q2", "docid": "d1", "relevance": 1}]}
    for name, rows in lines.items():
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    retriever = make_retriever(tiny_tokenizer_dir, tmp_path / "retriever")
    metrics = run_evaluation(EvaluateArguments(output_dir=str(tmp_path / "out"), eval_data=str(folder),
                                               models=["bm25", str(retriever)], hybrid=True,
                                               rerank=[str(reranker_dir)], rerank_top_k=3), RunArguments())
    for first in ("bm25", "retriever", "retriever+bm25"):
        # the reranked top 3 go first, the rest keep their order: recall@100 is the first stage's
        assert metrics[f"{first}+rerank_recall_at_100"] == metrics[f"{first}_recall_at_100"]
        assert metrics[f"{first}+rerank_p95_ms_per_query"] >= metrics[f"{first}+rerank_ms_per_query"] > 0
    results = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "| bm25+rerank |" in results and "Reranking latency (top 3" in results
    assert "- `rerank`: pairs cut at 512 tokens, torch fp32" in results  # the settings the latency was measured at
    # interpolated rows: alpha 1 is the rerank row, alpha 0 the first stage's order, scored in one pass
    mixed = run_evaluation(EvaluateArguments(output_dir=str(tmp_path / "mixed"), eval_data=str(folder),
                                             models=["bm25"], rerank=[str(reranker_dir)], rerank_top_k=3,
                                             rerank_interpolation=[0.0, 0.5, 1.0]), RunArguments())
    assert mixed["bm25+rerank@0_ndcg_at_10"] == mixed["bm25_ndcg_at_10"]
    assert mixed["bm25+rerank_ndcg_at_10"] == metrics["bm25+rerank_ndcg_at_10"] and "bm25+rerank@1_ndcg_at_10" not in mixed
    assert "bm25+rerank@0.5_ndcg_at_10" in mixed
    assert "bm25+rerank_ms_per_query" in mixed and "bm25+rerank@0.5_ms_per_query" not in mixed  # one latency row
    with pytest.raises(ConfigError, match="alphas must lie in"):
        EvaluateArguments(output_dir=str(tmp_path / "x"), eval_data=str(folder), models=["bm25"],
                          rerank=[str(reranker_dir)], rerank_interpolation=[1.5])
    # rerank_first_stages picks the first stages reranked (a CPU evaluation's time is mostly reranking)
    chosen = run_evaluation(EvaluateArguments(output_dir=str(tmp_path / "chosen"), eval_data=str(folder),
                                              models=["bm25", str(retriever)], hybrid=True,
                                              rerank=[str(reranker_dir)], rerank_top_k=3,
                                              rerank_first_stages=["retriever+bm25"]), RunArguments())
    assert "retriever+bm25+rerank_ndcg_at_10" in chosen and "bm25+rerank_ndcg_at_10" not in chosen
    assert chosen["retriever+bm25+rerank_ndcg_at_10"] == metrics["retriever+bm25+rerank_ndcg_at_10"]
    # rerank_max_length: the pairs cut where the reranker was trained, as a scorer at that length cuts them
    from finbert2.data import read_retrieval_eval
    from finbert2.rerank.evaluate import rerank_run
    from finbert2.retrieve.evaluate import bm25_evaluation
    from finbert2.retrieve.metrics import evaluate_run

    loaded_at, load = [], CrossEncoderScorer.from_pretrained
    monkeypatch.setattr(CrossEncoderScorer, "from_pretrained",
                        lambda name, **kwargs: loaded_at.append(kwargs.get("max_length")) or load(name, **kwargs))
    short = run_evaluation(EvaluateArguments(output_dir=str(tmp_path / "short"), eval_data=str(folder),
                                             models=["bm25"], rerank=[str(reranker_dir)], rerank_top_k=3,
                                             rerank_max_length=12), RunArguments())
    data = read_retrieval_eval(str(folder))
    expected, _ = rerank_run(CrossEncoderScorer.from_pretrained(str(reranker_dir), max_length=12), data,
                             bm25_evaluation(data)[2], 3)
    assert short["bm25+rerank_map"] == pytest.approx(evaluate_run(data.qrels, expected)["map"])
    assert loaded_at[0] == 12  # the evaluation loaded its reranker at that length
    with pytest.raises(ConfigError, match="rerank_window_chars needs --rerank"):
        EvaluateArguments(output_dir=str(tmp_path / "x"), eval_data=str(folder), models=["bm25"], rerank_window_chars=50)
    windowed = run_evaluation(EvaluateArguments(output_dir=str(tmp_path / "windowed"), eval_data=str(folder),
                                                models=["bm25"], rerank=[str(reranker_dir)], rerank_top_k=3,
                                                rerank_window_chars=10), RunArguments())
    assert windowed["bm25+rerank_recall_at_100"] == windowed["bm25_recall_at_100"]
    with pytest.raises(ConfigError, match="rerank_first_stages e5 name no first stage"):
        run_evaluation(EvaluateArguments(output_dir=str(tmp_path / "never"), eval_data=str(folder), models=["bm25"],
                                         rerank=[str(reranker_dir)], rerank_first_stages=["e5"]), RunArguments())
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_a_tiny_cross_encoder_trained_on_bm25_mined_demo_triples_beats_its_untrained_start(tmp_path, monkeypatch):
    """The demo recipe end to end: BM25 mines the negatives, the tiny config trains a from-scratch
    cross-encoder (validated on the demo validation folder), and on the demo evaluation folder (the test)
    it reranks BM25's top 20 better than its untrained start, rebuilt from the run's own arguments."""
    from dataclasses import fields

    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, set_seed

    from finbert2.modeling import ModelArguments, load_model, tokenizer_for
    from finbert2.rerank.cli import train
    from finbert2.retrieve.args import EvaluateArguments, MineArguments
    from finbert2.retrieve.evaluate import run_evaluation
    from finbert2.retrieve.mine import run_mining
    from finbert2.run import RunArguments
    from finbert2.training import read_loss_log

    monkeypatch.chdir(REPO_ROOT)  # the config's paths are relative to the repository
    mined = tmp_path / "mined_bm25.jsonl"
    run_mining(MineArguments(model_name_or_path="bm25", input_file="data/demo/retrieval/queries.jsonl",
                             candidate_pool="data/demo/retrieval/candidates.jsonl", output_file=str(mined),
                             range_for_sampling="0-30", negative_number=7))
    out = tmp_path / "reranker"
    assert train(["configs/reranker/tiny.yaml", "--train_data", str(mined), "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["collapsed"] is False, metrics.get("collapse_reason")
    losses = [loss for _, loss in read_loss_log(out / "loss_log.csv")["loss"]]
    assert losses[-1] < math.log(4) - 0.2  # left the chance plateau (ln 4, a group of 4)
    assert metrics["best_metric"] > metrics["initial_eval_ndcg_at_10"] + 0.05

    # The untrained start as the trainer built it (its seed, its model arguments): same validation row.
    arguments = json.loads((out / "run_config.json").read_text(encoding="utf-8"))["arguments"]
    model_args = ModelArguments(**{f.name: arguments[f.name] for f in fields(ModelArguments)})
    tokenizer = tokenizer_for(model_args)
    set_seed(arguments["seed"])
    start = tmp_path / "start"
    load_model(AutoModelForSequenceClassification, model_args, tokenizer, num_labels=1).save_pretrained(start)
    tokenizer.save_pretrained(start)

    def reranked(folder: str, *rerankers: Path) -> dict[str, float]:
        return run_evaluation(EvaluateArguments(output_dir=str(tmp_path / f"eval_{Path(folder).name}"),
                                                eval_data=folder, models=["bm25"], rerank=[str(r) for r in rerankers],
                                                rerank_top_k=20), RunArguments())

    validation = reranked("data/demo/retrieval/validation", start)
    assert validation["bm25+rerank_ndcg_at_10"] == pytest.approx(metrics["initial_eval_ndcg_at_10"], abs=1e-6)
    test = reranked("data/demo/retrieval/eval", out, start)
    assert test["bm25+reranker_ndcg_at_10"] > test["bm25+start_ndcg_at_10"] + 0.05

    texts = [json.loads(line)["text"] for line in
             (DEMO_DIR / "retrieval" / "eval" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:6]]
    query = "嘉川储能中标了什么项目"
    ours = CrossEncoderScorer.from_pretrained(str(out)).score(query, texts)
    np.testing.assert_allclose(CrossEncoder(str(out), device="cpu").predict([(query, t) for t in texts]), ours,
                               atol=1e-5)
    # the folder records the length it was trained at: both cut pairs there by default
    assert CrossEncoderScorer.from_pretrained(str(out)).max_length == arguments["max_len"] == 160
    assert CrossEncoder(str(out), device="cpu").max_seq_length == 160


def test_the_new_head_trains_at_head_learning_rate_and_the_encoder_at_learning_rate(tmp_path, tiny_tokenizer_dir):
    """From a headless encoder folder the pooler and one-logit head are new: with head_learning_rate they
    move at that rate (Adam moves a weight by about its rate a step) while the encoder keeps its own."""
    from transformers import AutoModelForSequenceClassification, set_seed

    from finbert2.modeling import ModelArguments, load_model, tokenizer_for
    from finbert2.rerank.args import RerankerDataArguments, RerankerTrainingArguments
    from finbert2.rerank.trainer import run_training
    from finbert2.run import RunArguments

    encoder = make_retriever(tiny_tokenizer_dir, tmp_path / "encoder")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"query": NEWS[i][:6], "pos": [NEWS[i]], "neg": [NEWS[(i + 1) % len(NEWS)]]},
                                        ensure_ascii=False) + "\n" for i in range(len(NEWS))), encoding="utf-8")
    steps, head_lr, encoder_lr = 3, 1e-2, 1e-5
    model_args = ModelArguments(model_name_or_path=str(encoder))
    run_training(model_args, RerankerDataArguments(train_data=[str(train)], train_group_size=2, max_len=64),
                 RerankerTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, learning_rate=encoder_lr,
                                           head_learning_rate=head_lr, lr_scheduler_type="constant", weight_decay=0.0,
                                           per_device_train_batch_size=2, save_strategy="no", report_to="none",
                                           use_cpu=True, seed=5),
                 RunArguments())
    set_seed(5)  # the start as the trainer built it
    start = load_model(AutoModelForSequenceClassification, model_args, tokenizer_for(model_args), num_labels=1)
    assert start.new_module_names == ["bert.pooler.dense", "classifier"]
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    before, after = start.state_dict(), trained.state_dict()
    moved = {name: (after[name] - before[name]).abs().max().item() for name in before}
    head = max(v for k, v in moved.items() if k.startswith(("bert.pooler.", "classifier.")))
    body = max(v for k, v in moved.items() if not k.startswith(("bert.pooler.", "classifier.")))
    assert 0.5 * head_lr < head <= steps * head_lr * 1.01
    assert 0 < body <= steps * encoder_lr * 1.01
