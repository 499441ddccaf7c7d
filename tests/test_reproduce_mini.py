"""The mini reproduction (scripts/reproduce_mini.sh) end to end on the public data, at smoke size.

The general encoder is a random 2 x 64 encoder shaped like the converted multilingual-e5-small (its
tokenizer, prompts, mean pooling), placed as the finished "general" stage, which the script then skips:
every later stage runs its own code on the real data in seconds instead of e5's minutes. This test
checks the pipeline's glue (what each stage hands the next, the leakage guards, the tables); the real
e5 is trained and scored by the quickstart and tests/test_e5_*.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT, public_data_dir, require_public

# The smallest settings that still run every stage: a handful of steps, short inputs, two sentiment seeds (so the
# mean +- std path runs). The tasks run on general and the merged finbert2-mini (the one encoder whose folder is not
# OUT/<name>); finbert2-mini itself is scored in the ablation, so every table and every kind of row appears.
SMOKE = {
    "MLM_STEPS": "2", "RETROMAE_STEPS": "2", "SEQ_LEN": "64", "PRETRAIN_BATCH": "4", "PRETRAIN_SEQUENCES": "64",
    "EVAL_SEQUENCES": "32", "ADDED_WORDS": "100", "ENCODERS": "general finbert2-mini-merged",
    "SENTIMENT_SEEDS": "42 43", "EVENT_SEEDS": "42", "SC2_SEEDS": "42", "CLS_EPOCHS": "1", "CLS_MAX_LENGTH": "32",
    "RET_MAX_STEPS": "2", "RET_EVAL_STEPS": "1", "RET_BATCH": "4", "RET_GROUP": "2", "MINE_NEGATIVES": "1",
    "RET_PASSAGE_LEN": "64", "TOPIC_DOCS": "300", "TOPIC_MIN_CLUSTER": "10",
}
ENCODERS = ["general", "finbert2-mini-merged"]
CLASSIFY_RUNS = [f"classify/cfb_sentiment/{e}_seed{s}" for s in (42, 43) for e in ENCODERS] + [
    f"classify/{task}/{e}_seed42" for task in ("cfb_event", "sc2") for e in ENCODERS] + [
    f"classify/{task}/tfidf" for task in ("cfb_sentiment", "cfb_event", "sc2")]
RUNS = ["data", "general", "tokenizer", "domain-words", "mlm", "finbert2-mini", *CLASSIFY_RUNS,
        *(f"retrieve/{kind}_{e}" for e in ENCODERS for kind in ("mined", "finetuned")), "retrieve/evaluation",
        *(f"topics/{e}" for e in ENCODERS), "topics/tfidf"]
RETRIEVAL_ROWS = ["bm25", *ENCODERS, *(f"finetuned_{e}" for e in ENCODERS)]
ABLATION_ROWS = ["general", "domain-words", "mlm", "mlm-merged", "finbert2-mini", "finbert2-mini-merged"]
TABLES = ["## Budget per stage", "## Classification", "### CFBenchmark sentiment (3 classes)",
          "### CFBenchmark event, level 1 (4 classes)", "### SC_2 (2 classes)", "## Retrieval (Fin-Eva held-out split)",
          "### nDCG@10 per source file", "### Fine-tuning runs", "## Ablation: the adaptation steps, zero-shot (Fin-Eva)",
          "## Topics (JINGEWU headlines)", "## Pretraining (finbert2-mini)"]


def without_space(text):
    return re.sub(r"\s+", "", text)


def run_script(out, timeout=1800, data_dir=None, **env):
    env = {**os.environ, **SMOKE, "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(["sh", "scripts/reproduce_mini.sh", str(data_dir or public_data_dir()), str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_reproduce_mini_runs_every_stage_on_public_data(tmp_path, tiny_e5_shaped_dir):
    for folder in ("cfbenchmark-basic", "fin-eva", "finbert2-upstream", "jingewu-financial-sentiment-analysis"):
        require_public(folder)
    out = tmp_path / "mini"
    shutil.copytree(tiny_e5_shaped_dir, out / "general")
    result = run_script(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "general encoder (multilingual-e5-small): already finished" in result.stdout  # the seeded encoder

    for run in RUNS:
        metrics = json.loads((out / run / "metrics.json").read_text(encoding="utf-8"))
        assert metrics, run
    # The pretraining corpus left out every classification test text and held-out Fin-Eva context.
    data = json.loads((out / "data" / "metrics.json").read_text(encoding="utf-8"))
    corpus = [json.loads(line)["text"] for line in (out / "data" / "corpus.jsonl").open(encoding="utf-8")]
    assert data["corpus_documents"] == len(corpus) > 0
    corpus_keys = {without_space(text) for text in corpus}
    for test_file in ("cfb_sentiment/test.jsonl", "cfb_event/test.jsonl", "sc2/test.jsonl"):
        test_keys = {without_space(json.loads(line)["text"])
                     for line in (out / "data" / test_file).open(encoding="utf-8")}
        assert test_keys and not corpus_keys & test_keys, test_file
    test_docs = {json.loads(line)["docid"] for line in (out / "data/fineva/eval/test_qrels.jsonl").open(encoding="utf-8")}
    test_contexts = {without_space(json.loads(line)["text"]) for line in
                     (out / "data/fineva/eval/corpus.jsonl").open(encoding="utf-8") if json.loads(line)["id"] in test_docs}
    assert test_contexts and not corpus_keys & test_contexts
    # ... and the Fin-Eva validation contexts the pretraining stages keep their checkpoint by.
    val_contexts = {without_space(json.loads(line)["text"]) for line in
                    (out / "data/fineva/validation/corpus.jsonl").open(encoding="utf-8")
                    if json.loads(line)["id"] in {json.loads(q)["docid"] for q in
                                                  (out / "data/fineva/validation/test_qrels.jsonl").open(encoding="utf-8")}}
    assert val_contexts and not corpus_keys & val_contexts
    # FinBERT2-mini is e5 with the domain words added: a larger vocab than the general encoder's, from the words-only
    # encoder on; each pretraining run trained to its last step and merged with its start (RetroMAE's start is the MLM
    # merge), alpha chosen on validation nDCG@10 and the sentiment probe, each merge's held-out MLM loss measured.
    general_vocab = json.loads((out / "general" / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    for folder in ("domain-words", "mlm", "finbert2-mini", "finbert2-mini/merged_with_start"):
        assert json.loads((out / folder / "config.json").read_text(encoding="utf-8"))["vocab_size"] > general_vocab
    for stage in ("mlm", "finbert2-mini"):
        metrics = json.loads((out / stage / "metrics.json").read_text(encoding="utf-8"))
        assert "eval_ndcg_at_10" in metrics and 0.0 <= metrics["merge_alpha"] <= 1.0, stage
        assert metrics["merge_mlm_loss_bound"] == metrics["unigram_cross_entropy"] and metrics["merge_mlm_loss"] > 0
        assert metrics["merge_eval_classification_train"].endswith("cfb_sentiment/train.jsonl"), stage
    retromae = json.loads((out / "finbert2-mini" / "run_config.json").read_text(encoding="utf-8"))
    assert retromae["arguments"]["model_name_or_path"] == str(out / "mlm" / "merged_with_start")
    # Every model, zero-shot, fine-tuned and fused with BM25, scored on the same held-out queries, per source too.
    evaluation = json.loads((out / "retrieve" / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    dense = RETRIEVAL_ROWS[1:]
    for row in RETRIEVAL_ROWS + [f"{d}+bm25" for d in dense] + ABLATION_ROWS + ["chance"]:
        assert 0.0 <= evaluation[f"{row}_ndcg_at_10"] <= 1.0, row
    for row in RETRIEVAL_ROWS + [f"{d}+bm25" for d in dense]:
        assert len(evaluation["ndcg_at_10_by_source"][row]) == 5, row  # Fin-Eva's five context files
    # The retrievers validated as they trained and kept their best checkpoint.
    for encoder in ENCODERS:
        metrics = json.loads((out / "retrieve" / f"finetuned_{encoder}" / "metrics.json").read_text(encoding="utf-8"))
        assert "initial_eval_ndcg_at_10" in metrics and "best_metric" in metrics, encoder

    tables = (out / "tables.md").read_text(encoding="utf-8")
    for heading in TABLES:
        assert f"\n{heading}\n" in tables, heading
    assert "(n=2)" in tables  # the sentiment rows are means over the two seeds
    classification = tables.split("## Classification")[1].split("## Retrieval")[0]
    for task in ("CFBenchmark sentiment", "CFBenchmark event", "SC_2"):
        table = classification.split(f"### {task}")[1].split("###")[0]
        for encoder in ENCODERS:
            for row in (f"| fine-tuned from {encoder} |", f"| LP (probe only) on {encoder} |",
                        f"| {encoder}, untrained (probe head) |"):
                assert row in table, (task, row)
        for row in ("| TF-IDF + logistic regression |", "| chance: majority class |"):
            assert row in table, (task, row)
    for row in ["| finetuned_general+bm25 |", "| finetuned_finbert2-mini-merged+bm25 |", "| chance |",
                "| TF-IDF / LSA |", "| RetroMAE |", "| whole-word MLM |"]:
        assert row in tables, row
    # each adaptation step and the goals' comparisons with their paired bootstrap interval on the test queries
    paired = tables.split("### Paired differences")[1].split("###")[0]
    for pair in ("| domain-words | general |", "| finbert2-mini-merged | general |", "| finetuned_general | general |",
                 "| finetuned_finbert2-mini-merged+bm25 | bm25 |"):
        assert pair in paired, pair
    ablation = tables.split("## Ablation")[1].split("## Topics")[0]
    for row in ("| general (e5-small, pruned): the untrained start |", "| + domain words", "| + whole-word MLM |",
                "| + whole-word MLM, merged with its start |", "| + RetroMAE (= finbert2-mini) |",
                "| + RetroMAE, merged with its start", "| BM25 baseline |", "| chance: random ranking |"):
        assert row in ablation, row
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert report.index("## Results") < report.index("## Runs")
    assert (out / "report" / "report.html").exists()

    # A rerun finds every stage finished and only rebuilds the report.
    again = run_script(out, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already finished") == len(RUNS)


# The flags whose values are sizes: the only ones GPU=1 may change.
SIZE_FLAGS = {"--max_steps", "--per_device_train_batch_size", "--max_seq_length", "--max_eval_samples", "--eval_steps",
              "--save_steps", "--max_length", "--passage_max_len", "--eval_retrieval_max_length", "--use_cpu",
              "--num_train_epochs"}


def stage_commands(tmp_path, **overrides):
    """``{stage name: command words}`` the script would run at its own defaults and ``overrides`` (DRY_RUN prints
    them and runs nothing)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in SMOKE and k != "GPU"}
    result = subprocess.run(["sh", "scripts/reproduce_mini.sh", str(tmp_path / "data"), str(tmp_path / "out")],
                            cwd=REPO_ROOT, env={**env, "DRY_RUN": "1", **overrides}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not (tmp_path / "out" / "data").exists()  # nothing ran
    commands = {}
    for line in result.stdout.splitlines():
        match = re.match(r"==> \[\d+/\d+\] (.+?): (.+)$", line)
        if match:
            commands[match.group(1)] = match.group(2).split()
    return commands


def sizes_masked(words):
    return [("SIZE" if i and words[i - 1] in SIZE_FLAGS else word) for i, word in enumerate(words)]


def test_gpu_preset_changes_only_sizes(tmp_path):
    """GPU=1 runs the same stages with the same flags; only size values (steps, batch, sequence length, evaluation
    interval, use_cpu) differ, and they do."""
    cpu = stage_commands(tmp_path)
    gpu = stage_commands(tmp_path, GPU="1")
    assert list(cpu) == list(gpu) and len(cpu) > 40  # every stage, in the same order
    changed = set()
    for name in cpu:
        assert sizes_masked(cpu[name]) == sizes_masked(gpu[name]), name
        changed |= {cpu[name][i - 1] for i, (a, b) in enumerate(zip(cpu[name], gpu[name])) if a != b}
    assert {"--max_steps", "--per_device_train_batch_size", "--max_seq_length", "--use_cpu"} <= changed
    mlm = gpu["whole-word MLM"]
    assert mlm[mlm.index("--use_cpu") + 1] == "false" and mlm[mlm.index("--max_steps") + 1] == "2000"


def test_merging_trains_to_the_last_step_and_none_keeps_the_best_checkpoint(tmp_path):
    """MERGE (the default, auto): each pretraining stage keeps its last step and its merge with its start is chosen on
    validation retrieval and the sentiment probe; RetroMAE starts from the MLM merge. MERGE=none keeps each stage's
    best validation checkpoint and RetroMAE starts from the MLM run."""
    def value(words, flag):
        return words[words.index(flag) + 1] if flag in words else None

    out = tmp_path / "out"
    merged = stage_commands(tmp_path)
    mlm, retromae = merged["whole-word MLM"], merged["RetroMAE (finbert2-mini)"]
    for words in (mlm, retromae):
        assert value(words, "--load_best_model_at_end") == "false" and value(words, "--merge_with_start") == "auto"
        assert value(words, "--merge_eval_classification_train") == str(out / "data/cfb_sentiment/train.jsonl")
        assert value(words, "--merge_eval_classification_data") == str(out / "data/cfb_sentiment/validation.jsonl")
    assert value(retromae, "--model_name_or_path") == str(out / "mlm" / "merged_with_start")
    assert "--merge_eval_classification_data" not in stage_commands(tmp_path, MERGE_PROBE="none")["whole-word MLM"]
    kept = stage_commands(tmp_path, MERGE="none", ENCODERS="general finbert2-mini")
    mlm, retromae = kept["whole-word MLM"], kept["RetroMAE (finbert2-mini)"]
    assert value(mlm, "--load_best_model_at_end") == "true" and value(mlm, "--metric_for_best_model") == "eval_ndcg_at_10"
    assert "--merge_with_start" not in mlm and value(retromae, "--model_name_or_path") == str(out / "mlm")
