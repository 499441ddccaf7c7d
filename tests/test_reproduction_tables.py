"""The reproduction's tables from hand-made run folders: means and spreads, rows, and the splice into a document."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from finbert2.errors import DataError
from finbert2.report.reproduction import BEGIN, END, build_tables, mean_std, splice_tables


def write_metrics(folder, **metrics):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def test_mean_std_is_the_sample_spread():
    assert mean_std([0.5, 0.7]) == "0.600 ± 0.141 (n=2)"  # stdev of 0.5, 0.7 = sqrt(0.02)
    assert mean_std([0.25]) == "0.250" and mean_std([]) == "–" and mean_std([None, 0.1]) == "0.100"


def write_runs(out):
    """A hand-made reproduction OUT: sentiment with two seeds (probe head, so LP rows), its baseline, the retrieval
    evaluation with the ablation's encoders and hybrids, the pretraining records and topics."""
    sentiment = out / "classify" / "cfb_sentiment"
    for seed, (val, test) in zip((42, 43), ((0.6, 0.5), (0.8, 0.7))):
        write_metrics(sentiment / f"general_seed{seed}", eval_macro_f1=val, test_macro_f1=test, test_accuracy=test,
                      initial_eval_macro_f1=0.55, probe_eval_macro_f1=0.55, probe_test_macro_f1=0.45,
                      probe_test_accuracy=0.5, head_init="probe", test_majority_macro_f1=0.19, total_seconds=100 + seed,
                      kept="start" if seed == 42 else "fine-tuned")
    write_metrics(sentiment / "tfidf", eval_macro_f1=0.68, test_macro_f1=0.59, test_accuracy=0.6)
    labels = ["bm25", "general", "finetuned_general", "domain-words", "mlm", "mlm-merged", "finbert2-mini", "chance"]
    scores = dict(zip(labels, (0.778, 0.675, 0.70, 0.676, 0.66, 0.68, 0.65, 0.003)))
    hybrids = {f"{label}+bm25_ndcg_at_10": 0.8 for label in ("general", "finetuned_general", "mlm")}
    write_metrics(out / "retrieve" / "evaluation", **{f"{k}_ndcg_at_10": v for k, v in scores.items()}, **hybrids,
                  num_queries=346, num_documents=1294,
                  ndcg_at_10_by_source={"bm25": {"a": 0.9, "b": 0.5}, "general": {"a": 0.8}, "mlm": {"a": 0.7}})
    write_metrics(out / "retrieve" / "finetuned_general", epoch=2.5, best_model_checkpoint="x/checkpoint-40",
                  initial_eval_ndcg_at_10=0.64, best_metric=0.66, train_loss=0.3, total_seconds=500)
    write_metrics(out / "mlm", global_step=120, initial_eval_loss=8.8, eval_loss=7.1, unigram_cross_entropy=7.5,
                  initial_eval_ndcg_at_10=0.652, eval_ndcg_at_10=0.653, merge_alpha=0.6, merge_ndcg_at_10=0.655,
                  merge_model_b_ndcg_at_10=0.651, merge_probe_macro_f1=0.74, merge_mlm_loss=7.3, train_runtime=600)
    write_metrics(out / "finbert2-mini", global_step=60, initial_eval_encoder_mlm_loss=7.0, eval_encoder_mlm_loss=6.9,
                  eval_loss=19.0, eval_ndcg_at_10=0.65, embedding_damaged=True)
    write_metrics(out / "topics" / "general", num_topics=30, silhouette=0.5, total_seconds=45)
    write_metrics(out / "topics" / "tfidf", num_topics=60, silhouette=0.7)
    (out / "stage_times.tsv").write_text("data\t20\nmlm\t100\nmlm\t90\n", encoding="utf-8")


def test_tables_from_run_folders(tmp_path):
    write_runs(tmp_path)
    tables = build_tables(tmp_path)
    assert "| fine-tuned from general | 0.700 ± 0.141 (n=2) | 0.600 ± 0.141 (n=2) | 0.600 ± 0.141 (n=2) | 1/2 | " \
           "142 ± 1 (n=2) |" in tables  # seed 42 kept its start
    assert "| LP (probe only) on general | 0.550 ± 0.000 (n=2) | 0.450 ± 0.000 (n=2) | 0.500 ± 0.000 (n=2) | – | – |" \
        in tables
    assert "| general, untrained (probe head) | 0.550 ± 0.000 (n=2) | – | – | – | – |" in tables
    assert "| TF-IDF + logistic regression | 0.680 | 0.590 | 0.600 | – | – |" in tables
    assert "| chance: majority class | – | 0.190 | – | – | – |" in tables
    retrieval = tables.split("## Retrieval")[1].split("## Ablation")[0]
    assert "| bm25 | 0.778 |" in retrieval and "| chance | 0.003 |" in retrieval
    assert "| finetuned_general+bm25 | 0.800 |" in retrieval
    assert "mlm" not in retrieval  # the ablation-only encoders (and their hybrids) are in the ablation table
    assert "| model | a | b |" in retrieval and "| general | 0.800 | – |" in retrieval  # a source a model lacks
    assert "| general | 2.50 | 40 | 0.640 | 0.660 | 0.300 |" in retrieval  # the fine-tuning run, its kept step
    ablation = tables.split("## Ablation")[1].split("## Topics")[0]
    assert "| general (e5-small, pruned): the untrained start | 0.651 | 0.675 | – | – |" in ablation
    assert "| + domain words (new rows = mean of pieces, no training) | 0.652 | 0.676 |" in ablation
    assert "| + whole-word MLM, merged with its start | 0.655 | 0.680 | – | 0.60 |" in ablation
    assert "| + RetroMAE (= finbert2-mini) | 0.650 | 0.650 |" in ablation
    assert "| BM25 baseline | – | 0.778 |" in ablation and "| chance: random ranking | – | 0.003 |" in ablation
    assert "| whole-word MLM | 120 | 8.800 | 7.100 | 7.500 | 0.652 | 0.653 | 0.60 | 0.655 | 0.740 | 7.300 |" in tables
    assert "| RetroMAE | 60 | 7.000 | 6.900 |" in tables and "**damaged**" in tables  # the encoder's MLM part
    assert "| TF-IDF / LSA | 60 |" in tables
    assert "| mlm | 90 | 1.5 |" in tables and "| **total** | **110** |" in tables  # a rerun replaces the time
    assert "finbert2-mini" not in tables.split("## Retrieval")[0]  # no rows for runs that do not exist


@pytest.mark.parametrize("missing, message", [
    ("classify/cfb_sentiment/tfidf", "cfb_sentiment/tfidf: tables: no TF-IDF + logistic regression baseline row"),
    ("classify/cfb_sentiment/general_seed42", None),  # one seed gone: still a table (the other seed)
    ("topics/tfidf", "topics/tfidf: tables: no TF-IDF / LSA baseline row"),
    ("topics/general", "topics/general: tables: no untrained (general embeddings) row"),
])
def test_tables_stop_without_a_reference_row(tmp_path, missing, message):
    """A comparison table's untrained, chance and baseline rows are required: their run missing is an error naming
    the folder, not a quietly shorter table."""
    write_runs(tmp_path)
    shutil.rmtree(tmp_path / missing)
    if message is None:
        assert "| fine-tuned from general | 0.800 |" in build_tables(tmp_path)
        return
    with pytest.raises(DataError, match=re.escape(message)):
        build_tables(tmp_path)


@pytest.mark.parametrize("dropped, message", [
    ("bm25", "evaluation: tables: no BM25 baseline row"),
    ("chance", "evaluation: tables: no chance row"),
    ("general", "evaluation: tables: no untrained (general zero-shot) row"),
    ("finetuned_general+bm25", "evaluation: tables: no finetuned_general+bm25 hybrid row"),
])
def test_retrieval_tables_stop_without_a_reference_row(tmp_path, dropped, message):
    write_runs(tmp_path)
    path = tmp_path / "retrieve" / "evaluation" / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    del metrics[f"{dropped}_ndcg_at_10"]
    path.write_text(json.dumps(metrics), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(message)):
        build_tables(tmp_path)


def test_classification_table_stops_without_untrained_or_chance(tmp_path):
    write_runs(tmp_path)
    sentiment = tmp_path / "classify" / "cfb_sentiment"
    for seed in (42, 43):  # the general runs are the untrained row; the chance level comes from them too
        path = sentiment / f"general_seed{seed}" / "metrics.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items()
                                    if k != "test_majority_macro_f1"}), encoding="utf-8")
    with pytest.raises(DataError, match="cfb_sentiment: tables: no chance \\(majority class\\) row"):
        build_tables(tmp_path)
    for seed in (42, 43):
        shutil.rmtree(sentiment / f"general_seed{seed}")
    write_metrics(sentiment / "finbert2-mini_seed42", eval_macro_f1=0.5, test_majority_macro_f1=0.19)
    with pytest.raises(DataError, match="general_seed\\*: tables: no untrained \\(general\\) row"):
        build_tables(tmp_path)


def test_splice_replaces_only_the_marked_part(tmp_path):
    document = tmp_path / "RESULTS.md"
    document.write_text(f"# Title\nintro\n{BEGIN}\nold table\n{END}\nverdict\n", encoding="utf-8")
    splice_tables(document, "# Tables\n\n## Budget\n\n| a |\n")
    assert document.read_text(encoding="utf-8") == f"# Title\nintro\n{BEGIN}\n### Budget\n\n| a |\n{END}\nverdict\n"
    document.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(DataError, match="RESULTS.md: expected one <!-- tables:begin --> followed by one"):
        splice_tables(document, "# T\n")
