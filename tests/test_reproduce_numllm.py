"""The NumLLM reproduction (scripts/reproduce_numllm.sh) end to end on the public data, over a tiny causal LM."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import REPO_ROOT, public_data_dir, require_public
from finbert2.numllm.evaluate import REFERENCE_ROWS
from tiny_causal_lm import build_tiny_causal_lm

SMOKE = {"DOMAIN_STEPS": "2", "NUMERIC_STEPS": "2", "NUMERIC_BATCH": "2", "HELDOUT_SEQUENCES": "4",
         "MAX_QUESTIONS": "6", "PERPLEXITY_TEXTS": "3", "CONFIG": "configs/numllm/tiny.yaml"}
STAGES = ["data", "items", "domain", "numeric", "merged", "eval", "eval_option"]
MODELS = ["base", "domain", "numeric", "merged"]


def test_reproduce_numllm_runs_every_stage_and_tables_carry_the_reference_rows(tmp_path):
    for folder in ("cfbenchmark-basic", "fineval-academic", "cflue"):
        require_public(folder)
    model = build_tiny_causal_lm(tmp_path / "tiny_lm")
    out = tmp_path / "numllm"
    env = {**os.environ, **SMOKE, "MODEL": str(model), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(["sh", "scripts/reproduce_numllm.sh", str(public_data_dir()), str(out)], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[1/8] gemma skipped" in result.stdout and not (out / "gemma-3-270m").exists()
    timed = [line.split("\t")[0] for line in (out / "stage_times.tsv").read_text(encoding="utf-8").splitlines()]
    assert timed == STAGES

    for stage, scoring in (("eval", "letter"), ("eval_option", "option_mean")):
        record = json.loads((out / stage / "results.json").read_text(encoding="utf-8"))
        assert record["scoring"] == scoring
        assert set(record["results"]) == {"val", "single", "heldout"}  # FinEval, CFLUE single-choice, NumCT
        for block in record["results"].values():
            rows = block["0"]
            assert list(rows) == [*MODELS, *REFERENCE_ROWS]
            assert all(rows[m]["n"] == 6 for m in MODELS)  # every model answers the same seeded sample
        table = (out / stage / "results.md").read_text(encoding="utf-8")
        assert f"({scoring} scoring)" in table and all(f"| {row} |" in table for row in REFERENCE_ROWS)
    # perplexity in the letter evaluation only (the option one would repeat it)
    assert all(f"{m}_perplexity" in json.loads((out / "eval" / "metrics.json").read_text()) for m in MODELS)
    assert not any(k.endswith("_perplexity") for k in json.loads((out / "eval_option" / "metrics.json").read_text()))

    tables = (out / "tables.md").read_text(encoding="utf-8")
    for heading in ("## Budget per stage", "## Accuracy, 0-shot, letter scoring",
                    "## Accuracy, 0-shot, option log-likelihood per token (option_mean)", "## Training"):
        assert heading in tables, heading
    accuracy_part, training_part = tables[tables.index("## Accuracy"):].split("## Training")
    assert "| domain | 2 |" in training_part and "| numeric | 2 |" in training_part  # steps
    for row in [*MODELS, *REFERENCE_ROWS]:
        # in both protocols' accuracy tables, and (all but chance, which answers no letter) their most-frequent-answer tables
        assert accuracy_part.count(f"| {row} |") == (2 if row == "chance" else 4), row
    assert "standard error at 25%: 17.7 points" in tables  # 6 questions a file

    rerun = subprocess.run(["sh", "scripts/reproduce_numllm.sh", str(public_data_dir()), str(out)], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.count("already finished") == len(STAGES)


def test_numllm_tables_name_a_folder_without_an_evaluation(tmp_path, capsys):
    from finbert2.report.numllm_tables import main

    assert main([str(tmp_path)]) != 0 and not (tmp_path / "tables.md").exists()
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no finished evaluation (eval/results.json)"
    assert main([str(tmp_path / "missing")]) != 0
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: no such folder"
