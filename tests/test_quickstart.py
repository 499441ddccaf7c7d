"""The README's main job, end to end, as CI runs it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO_ROOT


CONVERSIONS = ["e5-small", "gemma-3-270m"]  # converted models, not run folders of a stage
STAGES = ["tokenizer", "mlm", "retromae", "classify", "classify_baseline", "retriever_mine", "retriever",
          "retriever_eval", "topics"]
NUMLLM_STAGES = ["numllm_items", "numllm_domain", "numllm_numeric", "numllm_merged", "numllm_eval"]


@pytest.mark.slow
@pytest.mark.timeout(3000)  # every stage in sequence: allow for a slow CI machine
def test_quickstart_runs_every_stage(tmp_path):
    out = tmp_path / "quickstart"
    # As a user runs it: --bf16 auto decides (bf16 where the CPU has it natively). The suite's fp32 pin is
    # for exact comparisons; the bars below sit far from what either precision scores.
    as_a_user = {k: v for k, v in os.environ.items() if k != "FINBERT2_DISABLE_BF16"}
    result = subprocess.run(["sh", "scripts/quickstart.sh", str(out)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=2900, env=as_a_user)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "==> [1/" in result.stdout and "all" in result.stdout
    tokenizer_metrics = json.loads((out / "tokenizer" / "metrics.json").read_text())
    assert tokenizer_metrics["tokens_per_char"] < tokenizer_metrics["base_tokens_per_char"]
    for run in [*CONVERSIONS, *STAGES, *NUMLLM_STAGES]:
        assert (out / run / "metrics.json").is_file(), run
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    for run in [*STAGES, *NUMLLM_STAGES]:
        assert f"### {run}\n" in report, run
    assert "Unfinished run" not in report and (out / "report" / "report.html").is_file()
    assert "![loss.png]" in report  # loss curves of the training stages
    # the bar for the demo: models that work (BM25 scores 0.947 and TF-IDF 1.00 on this easy data)
    retrieval = json.loads((out / "retriever_eval" / "metrics.json").read_text())
    precision = json.loads((out / "retriever" / "run_config.json").read_text())["precision"]
    assert precision["requested"] == "auto" and isinstance(precision["bf16"], bool), precision
    assert retrieval["fin-retriever_ndcg_at_10"] >= 0.80, retrieval
    classify = json.loads((out / "classify" / "metrics.json").read_text())
    assert classify["test_macro_f1"] >= 0.90, classify
    assert report.index("## Results") < report.index("## Runs")  # the headline tables come first
    # the pretraining stages continue e5 the headless way: the MLM head's prior bias and warm-up, the bound beside the losses
    mlm = json.loads((out / "mlm" / "metrics.json").read_text())
    assert mlm["prior_bias"] is True and mlm["head_warmup_steps"] >= 1 and mlm["unigram_cross_entropy"] > 0, mlm
    assert "| pretraining | held-out MLM loss before | after | change | unigram bound |" in report

    # NumLLM: both LoRA modules took their steps, the merge is a plain model, every model answered the same items
    for module in ("numllm_domain", "numllm_numeric"):
        module_metrics = json.loads((out / module / "metrics.json").read_text())
        assert module_metrics["global_step"] == 2 and module_metrics["eval_loss"] is not None, module_metrics
    assert (out / "numllm_merged" / "model.safetensors").is_file()
    numllm = json.loads((out / "numllm_eval" / "metrics.json").read_text())
    assert numllm["heldout_questions"] == 8
    for model in ("base", "domain", "numeric", "merged"):
        assert 0 <= numllm[f"{model}_heldout_0shot_accuracy"] <= 1 and numllm[f"{model}_perplexity"] > 1, model
    numllm_table = report[report.index("### NumLLM"):report.index("## Runs")]
    assert "held-out NumCT items %" in numllm_table and "held-out perplexity" in numllm_table
    for row in ("base", "domain", "numeric", "merged", "chance", "numllm_domain", "numllm_numeric"):
        assert f"| {row} |" in numllm_table, row

    # A second run finds every stage finished and skips it.
    again = subprocess.run(["sh", "scripts/quickstart.sh", str(out)], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=600, env=as_a_user)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_a_failing_stage_stops_the_pipeline_naming_it(tmp_path):
    """Earlier stages finished (their metrics.json), the classifier's input model missing: the
    quickstart names the classify stage, exits non-zero, keeps the earlier runs and starts no later one."""
    out = tmp_path / "quickstart"
    for finished in ("e5-small", "tokenizer", "mlm", "retromae"):
        (out / finished).mkdir(parents=True)
        (out / finished / "metrics.json").write_text("{}")
    result = subprocess.run(["sh", "scripts/quickstart.sh", str(out)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert "==> [4/16] retromae: already finished" in result.stdout
    assert "==> [5/16] classify ->" in result.stdout
    assert f"quickstart: stage 'classify' failed; earlier stages' results are kept in {out}" in result.stderr
    assert "error: " in result.stderr and "Traceback" not in result.stderr  # the stage's own one-line reason
    assert all((out / kept / "metrics.json").is_file() for kept in ("e5-small", "tokenizer", "mlm", "retromae"))
    assert not (out / "classify" / "metrics.json").exists()
    assert not any((out / later).exists() for later in [*STAGES[4:], *CONVERSIONS[1:], *NUMLLM_STAGES, "report"])
