"""The NumLLM reproduction (scripts/reproduce_numllm.sh) end to end on the public data, over a tiny causal LM."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import REPO_ROOT, public_data_dir, require_public
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
            assert list(rows) == [*MODELS, "chance", "longest option"]
            assert all(rows[m]["n"] == 6 for m in MODELS)  # every model answers the same seeded sample
        table = (out / stage / "results.md").read_text(encoding="utf-8")
        assert f"({scoring} scoring)" in table and "| longest option |" in table
    # perplexity in the letter evaluation only (the option one would repeat it)
    assert all(f"{m}_perplexity" in json.loads((out / "eval" / "metrics.json").read_text()) for m in MODELS)
    assert not any(k.endswith("_perplexity") for k in json.loads((out / "eval_option" / "metrics.json").read_text()))

    rerun = subprocess.run(["sh", "scripts/reproduce_numllm.sh", str(public_data_dir()), str(out)], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.count("already finished") == len(STAGES)
