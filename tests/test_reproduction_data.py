"""The reproduction's data step (``prepare-data``), shared with scripts/sweep_adaptation.py: on the public data."""

from __future__ import annotations

import json
import re

from conftest import require_public

from finbert2.report.reproduction import main


def _texts(path, field="text"):
    return [json.loads(line)[field] for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_data_converts_every_dataset_and_keeps_held_out_texts_out_of_the_corpus(tmp_path, capsys):
    data_dir = require_public("fin-eva").parent
    out = tmp_path / "data"
    assert main(["prepare-data", str(data_dir), str(out), "--seed", "42", "--fineva_validation", "0.15"]) == 0
    for task in ("cfb_sentiment", "cfb_event", "sc2"):
        assert all((out / task / f"{split}.jsonl").is_file() for split in ("train", "validation", "test"))
    counts = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    corpus = _texts(out / "corpus.jsonl")
    assert counts["corpus_documents"] == len(corpus) == len(set(corpus)) > 10_000

    def key(text):
        return re.sub(r"\s+", "", text)

    held_out = {key(t) for task in ("cfb_sentiment", "cfb_event", "sc2") for t in _texts(out / task / "test.jsonl")}
    for split in ("eval", "validation"):  # every Fin-Eva context a test or validation question asks for
        folder = out / "fineva" / split
        relevant = {json.loads(line)["docid"] for line in (folder / "test_qrels.jsonl").read_text("utf-8").splitlines()}
        held_out |= {key(json.loads(line)["text"]) for line in (folder / "corpus.jsonl").read_text("utf-8").splitlines()
                     if json.loads(line)["id"] in relevant}
    assert held_out and not held_out & {key(t) for t in corpus}

    assert main(["prepare-data", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "missing/cfbenchmark-basic/data/sentiment.jsonl: no such file" in capsys.readouterr().err
