"""The report builder over any (partial) set of run folders."""

from __future__ import annotations

import base64
import json
import re

from finbert2.data import write_json
from finbert2.report import build_report, find_run_dirs
from finbert2.run import write_metrics
from finbert2.training import LossLogCallback, plot_loss_curves


def _run(folder, stage, metrics=None, arguments=None):
    folder.mkdir(parents=True)
    write_json(folder / "run_config.json", {"stage": stage, "git_commit": "abc1234", "arguments": arguments or {}})
    if metrics is not None:
        write_metrics(folder, metrics)
    return folder


def _loss_curve(folder):
    callback = LossLogCallback(folder)

    class State:
        is_world_process_zero = True
        epoch = 1.0

    for step, loss in [(1, 4.0), (2, 3.0), (3, 2.5)]:
        State.global_step = step
        callback.on_log(None, State, None, logs={"loss": loss})
    return plot_loss_curves(folder)


def test_report_sections_from_partial_runs(tmp_path):
    root = tmp_path / "runs"
    mlm = _run(root / "mlm", "mlm", {"train_loss": 2.5, "perplexity": 12.0}, {"learning_rate": 6e-4})
    _loss_curve(mlm)
    ours = _run(root / "classify", "classify", {"test_macro_f1": 0.81, "test_accuracy": 0.85})
    _run(root / "classify_baseline", "classify", {"test_macro_f1": 0.74, "test_accuracy": 0.80})
    (ours / "confusion_matrix.png").write_bytes((mlm / "loss.png").read_bytes())
    retrieve = _run(root / "retrieve_eval", "retrieve", {"ndcg_at_10": 0.6})
    (retrieve / "comparison.md").write_text("| model | ndcg_at_10 |\n|---|---|\n| bm25 | 0.55 |\n| ours | 0.60 |\n")
    topics = _run(root / "topics", "topics", {"num_topics": 3})
    (topics / "topics.csv").write_text("id,size,words\n" + "".join(f"{i},{10 - i},词{i}\n" for i in range(20)))
    (topics / "doc_topics.csv").write_text("doc,topic\n1,0\n")
    _run(root / "retromae", "retromae")  # killed before finishing: no metrics

    assert len(find_run_dirs([root])) == 6
    summary = build_report([root], tmp_path / "report")
    assert summary == {"runs": 6, "images": 2, "finished_runs": 5}
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    # stages in pipeline order, each with its numbers
    assert [m for m in re.findall(r"^## (\S+)$", md, re.M)] == ["Results", "Runs", "mlm", "retromae", "classify",
                                                              "retrieve", "topics"]
    assert "| perplexity | 12 |" in md and "| learning_rate | 0.0006 |" in md
    assert "**Unfinished run**" in md
    assert "| classify | 0.81 | 0.85 |" in md and "| classify_baseline | 0.74 | 0.8 |" in md  # side by side
    assert "| bm25 | 0.55 |" in md
    assert "topics.csv (first 15 of 20 rows)" in md and "doc_topics.csv" not in md
    for image in re.findall(r"!\[[^]]*\]\((assets/[^)]+)\)", md):
        assert (tmp_path / "report" / image).read_bytes()[:4] == b"\x89PNG"

    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and base64.b64decode(images[0])[:4] == b"\x89PNG"
    assert not re.search(r'src="(?!data:)', page)  # self-contained: no external files
    assert "<td>bm25</td><td>0.55</td>" in page


def test_report_leads_with_headline_tables_and_lists_changed_arguments_only(tmp_path):
    root = tmp_path / "runs"
    _run(root / "classify", "classify train", {"eval_macro_f1": 0.95, "test_macro_f1": 0.93,
                                               "initial_eval_macro_f1": 0.21, "eval_majority_macro_f1": 0.18})
    _run(root / "classify_baseline", "classify baseline", {"eval_macro_f1": 0.90, "test_macro_f1": 0.88})
    start, tuned = root / "retromae", root / "retriever"
    _run(start, "retromae", {"initial_eval_loss": 9.0, "eval_loss": 7.5, "sentence_mean_cosine": 0.9995,
                             "collapsed": True, "collapse_reason": "sentence vectors alike (mean cosine 0.9995)"})
    _run(tuned, "retrieve train", {"eval_ndcg_at_10": 0.7, "initial_eval_ndcg_at_10": 0.2},
         {"model_name_or_path": str(start)})
    _run(root / "retriever_eval", "retrieve evaluate",
         {"bm25_ndcg_at_10": 0.9, "retromae_ndcg_at_10": 0.25, "fin-retriever_ndcg_at_10": 0.84,
          "chance_ndcg_at_10": 0.01},
         {"models": ["bm25", str(start), str(tuned)], "labels": ["bm25", "retromae", "fin-retriever"]})
    run_config = root / "classify" / "run_config.json"
    write_json(run_config, {"stage": "classify train", "arguments": {"learning_rate": 1e-4, "seed": 42},
                            "changed_arguments": ["learning_rate"]})
    build_report([root], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")

    results, runs = md.index("## Results"), md.index("## Runs")
    assert results < runs and md.index("### Classification") < runs and md.index("### Retrieval") < runs
    # best vs baseline with the difference; the untrained start and chance rows (hand-computed)
    assert "| fine-tuned (best) | classify | 0.9500 | 0.9300 | +0.0500 |" in md
    assert "| baseline: TF-IDF + LR | classify_baseline | 0.9000 | 0.8800 |  |" in md
    assert "| untrained start | classify | 0.2100 |" in md and "| chance: majority class |  | 0.1800 |" in md
    # the retriever's untrained start is found among the evaluated models through its run config
    assert "| retriever_eval | fin-retriever | 0.8400 | 0.9000 | -0.0600 | 0.2500 | 0.0100 |" in md
    # a collapsed run is flagged in red inside the results, before any per-run detail
    warning = md.index("WARNING**</span> retromae: collapsed")
    assert warning < runs and 'style="color:#c00"' in md
    assert "| retromae | 9.0000 | 7.5000 | -1.5000 | – | – | – | 0.9995 | yes |" in md
    # config: only the changed argument, with a link to the full record
    detail = md[md.index("### classify\n"):]
    assert "1 arguments differ from the defaults (all 2 in run_config.json)" in detail
    assert "| learning_rate | 0.0001 |" in detail and "| seed |" not in detail.split("### ")[1]
    assert "[full config: run_config.json](../runs/classify/run_config.json)" in detail
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert page.index("<h2>Results</h2>") < page.index("<h2>Runs</h2>")
    # a run whose validation preferred its start says so in the headline
    _run(tmp_path / "runs2" / "classify", "classify train", {"eval_macro_f1": 0.95, "test_macro_f1": 0.93,
                                                             "kept": "start", "initial_eval_macro_f1": 0.95})
    build_report([tmp_path / "runs2"], tmp_path / "report2")
    md = (tmp_path / "report2" / "report.md").read_text(encoding="utf-8")
    assert "| fine-tuned (best) (validation kept the start) | classify | 0.9500 | 0.9300 |" in md
    assert '<p class="warning"><b>WARNING</b> retromae: collapsed' in page
    assert '<a href="../runs/classify/run_config.json">' in page


def test_run_config_records_which_arguments_differ_from_the_defaults(tmp_path):
    from transformers import TrainingArguments

    from finbert2.run import RUN_CONFIG_FILE, write_run_config

    training = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=1e-4, use_cpu=True)
    record = write_run_config(tmp_path, training, stage="x")
    assert {"output_dir", "learning_rate", "use_cpu"} <= set(record["changed_arguments"])
    assert not {"seed", "warmup_steps", "num_train_epochs", "debug"} & set(record["changed_arguments"])
    assert json.loads((tmp_path / RUN_CONFIG_FILE).read_text())["changed_arguments"] == record["changed_arguments"]


def test_report_on_a_single_unfinished_run(tmp_path, run_cli):
    _run(tmp_path / "only", "mlm")
    result = run_cli("report", tmp_path / "only", "--output", tmp_path / "rep")
    assert result.returncode == 0, result.stderr
    assert "Unfinished run" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("report", empty, "--output", tmp_path / "rep2")
    assert result.returncode == 2 and "holds no run folder" in result.stderr


def test_pretraining_table_reads_the_loss_against_the_unigram_bound_and_flags_damage(tmp_path):
    root = tmp_path / "runs"
    reason = ("pretraining is damaging the embedding space: zero-shot nDCG@10 0.3000 vs 0.6500 at the start "
              "(-0.3500, tolerance 0.02)")
    _run(root / "mlm_old", "mlm", {"initial_eval_loss": 12.7, "eval_loss": 7.4, "unigram_cross_entropy": 7.5,
                                   "initial_eval_ndcg_at_10": 0.65, "eval_ndcg_at_10": 0.30,
                                   "sentence_mean_cosine": 0.94, "collapsed": False, "embedding_damaged": True,
                                   "embedding_damage_reason": reason})
    _run(root / "mlm_new", "mlm", {"initial_eval_loss": 8.8, "eval_loss": 7.1, "unigram_cross_entropy": 7.5,
                                   "initial_eval_ndcg_at_10": 0.65, "eval_ndcg_at_10": 0.66,
                                   "sentence_mean_cosine": 0.87, "collapsed": False, "embedding_damaged": False})
    build_report([root], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| mlm_old | 12.7000 | 7.4000 | -5.3000 | 7.5000 | 0.6500 | 0.3000 | 0.9400 | no |" in md
    assert "| mlm_new | 8.8000 | 7.1000 | -1.7000 | 7.5000 | 0.6500 | 0.6600 | 0.8700 | no |" in md
    warning = md.index(f"WARNING**</span> mlm_old: {reason}")
    assert warning < md.index("## Runs") and "mlm_new: pretraining is damaging" not in md


def test_retromae_row_reads_its_encoder_mlm_loss_against_the_bound(tmp_path):
    """RetroMAE's eval_loss adds the decoder's loss: the unigram bound applies to its encoder's MLM loss."""
    _run(tmp_path / "runs" / "retromae", "retromae", {
        "initial_eval_loss": 13.3, "eval_loss": 13.1, "initial_eval_encoder_mlm_loss": 6.6,
        "eval_encoder_mlm_loss": 6.5, "unigram_cross_entropy": 6.4, "sentence_mean_cosine": 0.9})
    build_report([tmp_path / "runs"], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| retromae | 6.6000 | 6.5000 | -0.1000 | 6.4000 | – | – | 0.9000 | no |" in md


def test_numllm_headline_shows_every_model_beside_chance_and_the_lora_losses(tmp_path):
    root = tmp_path / "runs"

    def summary(accuracy, numeric_accuracy, top="A"):
        return {"n": 8, "numeric_n": 8, "non_numeric_n": 0, "accuracy": accuracy, "numeric_accuracy": numeric_accuracy,
                "non_numeric_accuracy": None, "top_letter": top, "top_letter_share": 0.5}

    rows = {"base": summary(0.25, 0.25), "domain": summary(0.375, 0.375), "merged": summary(0.5, 0.5),
            "chance": {**summary(0.25, 0.25, None), "top_letter_share": None}}
    evaluation = _run(root / "numllm_eval", "numllm-evaluate", {"base_heldout_0shot_accuracy": 0.25})
    write_json(evaluation / "results.json", {"scoring": "letter", "results": {"heldout": {"0": rows}},
                                             "perplexity": {"base": 40.5, "domain": 38.25, "merged": 39.0}})
    _run(root / "numllm_domain", "numllm-domain", {"task": "domain", "global_step": 2, "initial_eval_loss": 3.5,
                                                   "eval_loss": 3.25})
    build_report([root], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    headline = md[md.index("### NumLLM"):md.index("## Runs")]
    assert "| model | held-out NumCT items % | held-out perplexity |" in headline
    assert "| merged | 50.0 | 39.00 |" in headline and "| chance | 25.0 | – |" in headline
    assert "8 questions (8 numeric, 0 non-numeric" in headline
    assert "| numllm_domain | domain | 2 | 3.5000 | 3.2500 | -0.2500 |" in headline
