"""Every shipped config parses with its stage's arguments: a mistyped key in a base (GPU) config
would otherwise surface only on the cluster."""

from __future__ import annotations

import pytest

from conftest import REPO_ROOT
from finbert2.config import parse_args


def _dataclasses(stage: str) -> tuple:
    from finbert2.precision import PrecisionTrainingArguments

    from finbert2.classify.args import DataArguments
    from finbert2.modeling import ModelArguments
    from finbert2.rerank.args import RerankerDataArguments, RerankerTrainingArguments
    from finbert2.retrieve.args import RetrieverDataArguments, RetrieverTrainingArguments
    from finbert2.run import RunArguments
    from finbert2.tokenizer.args import TokenizerArguments
    from finbert2.topics.args import TopicArguments

    return {
        "tokenizer": (TokenizerArguments, RunArguments),
        "classify": (ModelArguments, DataArguments, PrecisionTrainingArguments, RunArguments),
        "retriever": (ModelArguments, RetrieverDataArguments, RetrieverTrainingArguments, RunArguments),
        "topics": (TopicArguments, RunArguments),
        "reranker": (ModelArguments, RerankerDataArguments, RerankerTrainingArguments, RunArguments),
    }[stage]


# What a user adds on the command line: base configs leave the data to them, and GPU settings
# (bf16) need use_cpu on this machine.
OVERRIDES = {
    "tokenizer": ["--train_data", "data/demo/corpus.jsonl"],
    "classify": ["--train_data", "data/demo/sentiment/train.jsonl", "--use_cpu", "True"],
    "retriever": ["--train_data", "data/demo/retrieval/train.jsonl", "--use_cpu", "True"],
    "topics": ["--train_data", "data/demo/topics/titles.jsonl"],
    "reranker": ["--train_data", "data/demo/retrieval/train.jsonl", "--use_cpu", "True"],
}
CONFIGS = sorted(p.relative_to(REPO_ROOT / "configs").as_posix()
                 for stage in ("tokenizer", "classify", "retriever", "topics", "reranker")
                 for p in (REPO_ROOT / "configs" / stage).glob("*.yaml"))


def test_every_stage_config_is_covered():
    assert len(CONFIGS) >= 9  # mlm/retromae configs are parsed in test_pretrain_retromae.py


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses(config, tmp_path):
    stage = config.split("/")[0]
    argv = [str(REPO_ROOT / "configs" / config), "--output_dir", str(tmp_path), *OVERRIDES[stage]]
    parsed = parse_args(_dataclasses(stage), argv, prog=f"test {config}")
    assert len(parsed) == len(_dataclasses(stage))
