"""The README's main job, end to end, as CI runs it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO_ROOT


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
    runs = ["e5-small", "tokenizer", "mlm", "retromae", "classify", "classify_baseline", "retriever_mine",
            "retriever", "retriever_eval", "topics"]
    for run in runs:
        assert (out / run / "metrics.json").is_file(), run
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    for run in runs[1:]:  # the conversion is not a run folder of a stage
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
    assert "==> [4/10] retromae: already finished" in result.stdout
    assert "==> [5/10] classify ->" in result.stdout
    assert f"quickstart: stage 'classify' failed; earlier stages' results are kept in {out}" in result.stderr
    assert "error: " in result.stderr and "Traceback" not in result.stderr  # the stage's own one-line reason
    assert all((out / kept / "metrics.json").is_file() for kept in ("e5-small", "tokenizer", "mlm", "retromae"))
    assert not (out / "classify" / "metrics.json").exists()
    assert not any((out / later).exists() for later in ("classify_baseline", "retriever_mine", "retriever",
                                                        "retriever_eval", "topics", "report"))
