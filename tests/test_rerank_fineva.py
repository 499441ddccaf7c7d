"""Real data: an e5-small cross-encoder trained on Fin-Eva for the suite's budget, as the second stage after BM25."""

from __future__ import annotations

import json
import os

import pytest
from conftest import REPO_ROOT, require_public

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Measured 2026-12-07 (fp32, as the suite runs, AMD EPYC with AVX512, 9.8 min): alpha 0.2 chosen on validation
# (0.6787 against BM25's 0.6790), test BM25 0.7784 -> interpolated 0.7840 (+0.0056), the reranker alone 0.7098.
# The threshold is "beats BM25": the measured margin is two questions' worth and inside question-sampling
# noise (the committed recipe's +0.006 has a bootstrap interval of [-0.005, +0.018]), so a CPU whose float
# rounding flips the validation choice of alpha could fail it. Hence opt-in until a recipe beats BM25
# distinguishably (issue 28's goal, BM25 + 0.04); then it joins the default suite.
MIN_TEST_GAIN = 0.0
OPT_IN = "FINBERT2_FINEVA_RERANKER"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.skipif(not os.environ.get(OPT_IN), reason=f"set {OPT_IN}=1 to run (10 min; its margin over "
                                 "BM25 is inside noise, see MIN_TEST_GAIN)")]


def test_e5_small_reranker_for_the_suite_budget_lifts_bm25_on_held_out_fin_eva(tmp_path, e5_pruned_dir):
    """Fin-Eva split as the mini reproduction splits it (validation 15% of the contexts, seed 42); BM25 mines 7
    negatives per training question among the training contexts (ranks 0-50); ``configs/reranker/e5-small.yaml``
    trains the converted e5-small for 40 steps of group 4, batch 8, pairs cut at 128 tokens (the suite's budget:
    the committed recipe's 80 steps of group 8 at 192 take half an hour on 2 cores). The interpolation weight
    between the reranker's and BM25's scores is chosen on the validation split; on the test split (346
    questions, BM25's top 10 reranked) the chosen row must beat BM25 alone by ``MIN_TEST_GAIN``."""
    from finbert2.converters.fin_eva import convert
    from finbert2.rerank.cli import train
    from finbert2.retrieve.args import EvaluateArguments, MineArguments
    from finbert2.retrieve.evaluate import run_evaluation
    from finbert2.retrieve.mine import run_mining
    from finbert2.run import RunArguments

    fineva = tmp_path / "fineva"
    convert(require_public("fin-eva"), fineva, validation_fraction=0.15, seed=42)
    mined = tmp_path / "mined_bm25.jsonl"
    run_mining(MineArguments(model_name_or_path="bm25", input_file=str(fineva / "train.jsonl"),
                             output_file=str(mined), range_for_sampling="0-50", negative_number=7))
    out = tmp_path / "reranker"
    assert train([str(REPO_ROOT / "configs" / "reranker" / "e5-small.yaml"), "--model_name_or_path", str(e5_pruned_dir),
                  "--train_data", str(mined), "--eval_data", str(fineva / "validation"), "--output_dir", str(out),
                  "--max_steps", "40", "--train_group_size", "4", "--max_len", "128", "--eval_top_k", "10",
                  "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "False"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["collapsed"] is False, metrics.get("collapse_reason")

    def evaluated(split: str, alphas: tuple[float, ...]) -> dict[str, float]:
        return run_evaluation(EvaluateArguments(output_dir=str(tmp_path / f"eval_{split}"),
                                                eval_data=str(fineva / split), models=["bm25"], rerank=[str(out)],
                                                rerank_top_k=10, rerank_max_length=128,
                                                rerank_interpolation=list(alphas)), RunArguments())

    validation = evaluated("validation", ALPHAS)
    alpha = max(ALPHAS, key=lambda a: validation[f"bm25+rerank@{a:g}_ndcg_at_10"])
    test = evaluated("eval", (alpha,))
    gain = test[f"bm25+rerank@{alpha:g}_ndcg_at_10"] - test["bm25_ndcg_at_10"]
    print("validation: BM25 " + f"{validation['bm25_ndcg_at_10']:.4f}, " + ", ".join(
        f"{a:g}: {validation[f'bm25+rerank@{a:g}_ndcg_at_10']:.4f}" for a in ALPHAS))
    print(f"alpha {alpha:g} (validation {validation[f'bm25+rerank@{alpha:g}_ndcg_at_10']:.4f}, BM25 "
          f"{validation['bm25_ndcg_at_10']:.4f}); test BM25 {test['bm25_ndcg_at_10']:.4f}, reranked alone "
          f"{test['bm25+rerank_ndcg_at_10']:.4f}, interpolated {test[f'bm25+rerank@{alpha:g}_ndcg_at_10']:.4f}")
    assert gain > MIN_TEST_GAIN
