"""Hard-negative mining with a scripted encoder: positives never returned, rank range and margin respected."""

from __future__ import annotations

import json
import random

import numpy as np

from finbert2.retrieve.mine import mine_hard_negatives, select_negatives


class ScriptedEncoder:
    """Passage i of the pool is the unit vector at angle i degrees; the query sits at angle 0."""

    def __init__(self, angles: dict[str, float], query_angle: float = 0.0):
        self.angles = angles
        self.query_angle = query_angle

    @staticmethod
    def _vec(deg):
        rad = np.deg2rad(deg)
        return np.array([np.cos(rad), np.sin(rad)], dtype=np.float32)

    def encode_passages(self, texts, **kwargs):
        return np.stack([self._vec(self.angles[t]) for t in texts])

    def encode_queries(self, texts, **kwargs):
        return np.stack([self._vec(self.query_angle) for _ in texts])


def _pool(n=30):
    # "p" is the positive at 5 degrees; candidates c0..c29 at 1, 3, 6, 9, ... degrees (c0 and c1 outrank it).
    angles = {"p": 5.0, "c0": 1.0, "c1": 3.0}
    angles.update({f"c{i}": 3.0 * i for i in range(2, n)})
    return angles


def test_mining_never_returns_a_positive_and_respects_the_rank_range():
    angles = _pool()
    encoder = ScriptedEncoder(angles)
    rows = [{"query": "问", "pos": ["p"]}]
    pool = [t for t in angles if t != "p"] + ["p"]  # the positive is also in the pool
    # ranking by cosine to angle 0: c0 (1), c1 (3), p (5), c2 (6), c3 (9), ... -> ranks 0, 1, 2, 3, 4, ...
    for _ in range(5):
        mined, stats = mine_hard_negatives(encoder, rows, pool, range_start=3, range_end=10, number=4,
                                           seed=random.randint(0, 10_000))
        neg = mined[0]["neg"]
        assert "p" not in neg
        assert len(neg) == 4 and len(set(neg)) == 4
        # ranks 3..9 are c2..c8 (p at rank 2 is outside the range anyway)
        assert set(neg) <= {f"c{i}" for i in range(2, 9)}


def test_positive_inside_the_range_is_skipped_not_counted():
    angles = _pool()
    mined, _ = mine_hard_negatives(ScriptedEncoder(angles), [{"query": "问", "pos": ["p"]}], list(angles),
                                   range_start=0, range_end=4, number=10)
    # ranks 0..3: c0, c1, p, c2 -> p dropped, only 3 left
    assert sorted(mined[0]["neg"]) == ["c0", "c1", "c2"]


def test_margin_drops_candidates_scoring_near_the_positive():
    angles = _pool()
    pos_score = float(np.cos(np.deg2rad(5.0)))
    margin = 0.01
    mined, _ = mine_hard_negatives(ScriptedEncoder(angles), [{"query": "问", "pos": ["p"]}], list(angles),
                                   range_start=0, range_end=30, number=29, margin=margin)
    neg = mined[0]["neg"]
    assert neg  # some remain
    for text in neg:
        assert np.cos(np.deg2rad(angles[text])) <= pos_score - margin
    # cos 5 deg = 0.9962: c0, c1 outscore the positive; c2 (6 deg, 0.9945) and c3 (9 deg, 0.9877) are
    # within 0.01 of it; c4 (12 deg, 0.9781) is not
    assert not {"c0", "c1", "c2", "c3"} & set(neg)
    assert "c4" in neg


def test_near_duplicates_of_the_positive_are_dropped():
    angles = {"p": 5.0, "p_copy": 5.0, "p spaced": 5.0, "far": 40.0, "mid": 20.0}
    mined, _ = mine_hard_negatives(ScriptedEncoder(angles), [{"query": "问", "pos": ["p"]}],
                                   ["p_copy", "p spaced", "far", "mid"], range_start=0, range_end=5, number=5,
                                   duplicate_threshold=0.999)
    assert sorted(mined[0]["neg"]) == ["far", "mid"]


def test_select_negatives_unit():
    rng = random.Random(0)
    ranked = [10, 11, 12, 13, 14, 15]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    got = select_negatives(ranked, scores, positive_ids={12}, positive_score=0.7, duplicate_ids={14},
                           range_start=1, range_end=6, number=10, margin=0.05, rng=rng)
    # rank 0 out of range; 11 scores above 0.7 - 0.05; 12 positive; 14 duplicate
    assert sorted(got) == [13, 15]


def test_mine_cli_writes_training_rows(tiny_bert_dir, tmp_path, run_cli, capsys):
    from finbert2.cli import run_main
    from finbert2.data import read_retrieval_train
    from finbert2.retrieve.cli import main
    from tests.conftest import DEMO_DIR

    queries = tmp_path / "queries.jsonl"
    rows = (DEMO_DIR / "retrieval" / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    queries.write_text("\n".join(rows) + "\n", encoding="utf-8")
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("\n".join((DEMO_DIR / "retrieval" / "candidates.jsonl").read_text(encoding="utf-8")
                                    .splitlines()[:200]) + "\n", encoding="utf-8")
    out = tmp_path / "mined.jsonl"
    result = run_cli("retrieve", "mine", "--model_name_or_path", tiny_bert_dir, "--input_file", queries,
                     "--candidate_pool", candidates, "--range_for_sampling", "2-30", "--negative_number", "5",
                     "--max_length", "96", "--output_file", out)
    assert result.returncode == 0, result.stderr
    mined = read_retrieval_train(out)
    assert len(mined) == 20
    for row in mined:
        assert len(row["neg"]) == 5
        assert not set(row["neg"]) & set(row["pos"])
    # an existing output is not overwritten silently
    assert run_main(main, ["mine", "--model_name_or_path", str(tiny_bert_dir), "--input_file", str(queries),
                           "--output_file", str(out)]) == 2
    assert "overwrite_output_file" in capsys.readouterr().err
    # the run-folder form writes the run contract too
    run_dir = tmp_path / "mine_run"
    assert run_main(main, ["mine", "--model_name_or_path", str(tiny_bert_dir), "--input_file", str(queries),
                           "--candidate_pool", str(candidates), "--range_for_sampling", "0-10",
                           "--negative_number", "3", "--max_length", "96", "--output_dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["queries"] == 20
    assert all(len(r["neg"]) == 3 for r in read_retrieval_train(run_dir / "train.jsonl"))
    assert (run_dir / "run_config.json").is_file()


def test_mine_bad_range_is_one_line_error(tiny_bert_dir, tmp_path, capsys):
    from finbert2.cli import run_main
    from finbert2.retrieve.cli import main

    assert run_main(main, ["mine", "--model_name_or_path", str(tiny_bert_dir), "--input_file", "x.jsonl",
                           "--range_for_sampling", "50-10", "--output_file", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: range_for_sampling '50-10': need 0 <= start < end"


def test_fill_random_tops_up_a_short_query_under_the_same_rules():
    angles = _pool()
    rows = [{"query": "问", "pos": ["p"]}]
    pos_score = float(np.cos(np.deg2rad(5.0)))
    # ranks 0..3 are c0, c1, p, c2; the margin turns all of them down: nothing is left in the range
    short, stats = mine_hard_negatives(ScriptedEncoder(angles), rows, list(angles), range_start=0, range_end=4,
                                       number=5, margin=0.01)
    assert short[0]["neg"] == [] and stats["queries_without_negatives"] == 1
    filled, stats = mine_hard_negatives(ScriptedEncoder(angles), rows, list(angles), range_start=0, range_end=4,
                                        number=5, margin=0.01, fill_random=True, seed=3)
    neg = filled[0]["neg"]
    assert len(neg) == len(set(neg)) == 5 and stats["random_negatives"] == 5 and stats["queries_short_of_negatives"] == 0
    # random rows come from outside the searched ranks, never the positive, and respect the margin
    assert not {"p", "c0", "c1", "c2"} & set(neg)
    assert all(np.cos(np.deg2rad(angles[t])) <= pos_score - 0.01 for t in neg)
