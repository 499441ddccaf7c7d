"""The reproduction's tables from hand-made run folders: means and spreads, rows, and the splice into a document."""

from __future__ import annotations

import json

import pytest

from finbert2.errors import DataError
from finbert2.report.reproduction import BEGIN, END, build_tables, mean_std, splice_tables


def write_metrics(folder, **metrics):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def test_mean_std_is_the_sample_spread():
    assert mean_std([0.5, 0.7]) == "0.600 ± 0.141 (n=2)"  # stdev of 0.5, 0.7 = sqrt(0.02)
    assert mean_std([0.25]) == "0.250" and mean_std([]) == "–" and mean_std([None, 0.1]) == "0.100"


def test_tables_from_run_folders(tmp_path):
    sentiment = tmp_path / "classify" / "cfb_sentiment"
    for seed, (val, test) in zip((42, 43), ((0.6, 0.5), (0.8, 0.7))):
        write_metrics(sentiment / f"general_seed{seed}", eval_macro_f1=val, test_macro_f1=test, test_accuracy=test,
                      initial_eval_macro_f1=0.2, test_majority_macro_f1=0.19)
    write_metrics(sentiment / "tfidf", eval_macro_f1=0.68, test_macro_f1=0.59, test_accuracy=0.6)
    write_metrics(tmp_path / "retrieve" / "evaluation", bm25_ndcg_at_10=0.778, general_ndcg_at_10=0.675,
                  chance_ndcg_at_10=0.003, num_queries=346, num_documents=1294,
                  ndcg_at_10_by_source={"bm25": {"a": 0.9, "b": 0.5}, "general": {"a": 0.8}})
    (tmp_path / "stage_times.tsv").write_text("data\t20\nmlm\t100\nmlm\t90\n", encoding="utf-8")
    tables = build_tables(tmp_path)
    assert "| fine-tuned from general | 0.700 ± 0.141 (n=2) | 0.600 ± 0.141 (n=2) |" in tables
    assert "| TF-IDF + logistic regression | 0.680 | 0.590 | 0.600 |" in tables
    assert "| chance: majority class | – | 0.190 | – |" in tables
    assert "| bm25 | 0.778 |" in tables and "| chance | 0.003 |" in tables
    assert "| model | a | b |" in tables and "| general | 0.800 | – |" in tables  # a source a model lacks
    assert "| mlm | 90 | 1.5 |" in tables and "| **total** | **110** |" in tables  # a rerun replaces the time
    assert "finbert2-mini" not in tables.split("## Retrieval")[0]  # no rows for runs that do not exist


def test_splice_replaces_only_the_marked_part(tmp_path):
    document = tmp_path / "RESULTS.md"
    document.write_text(f"# Title\nintro\n{BEGIN}\nold table\n{END}\nverdict\n", encoding="utf-8")
    splice_tables(document, "# Tables\n\n## Budget\n\n| a |\n")
    assert document.read_text(encoding="utf-8") == f"# Title\nintro\n{BEGIN}\n### Budget\n\n| a |\n{END}\nverdict\n"
    document.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(DataError, match="RESULTS.md: expected one <!-- tables:begin --> followed by one"):
        splice_tables(document, "# T\n")
