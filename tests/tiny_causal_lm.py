"""The numllm tests' tiny causal LM: the package's from-scratch Gemma3 (``finbert2.numllm.tiny``) over
the demo corpus, saved where a test wants it (built in under a second, no hub model)."""

from __future__ import annotations

import json
from pathlib import Path

from finbert2.numllm.tiny import TOKENIZER_TEXTS, save_tiny_causal_lm

DEMO_CORPUS = Path(__file__).resolve().parents[1] / "data" / "demo" / "corpus.jsonl"


def build_tiny_causal_lm(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer Gemma3ForCausalLM (hidden 64) with its tokenizer to ``folder``."""
    lines = DEMO_CORPUS.read_text(encoding="utf-8").splitlines()[:TOKENIZER_TEXTS]
    return save_tiny_causal_lm(folder, [json.loads(line)["text"] for line in lines], seed=seed)
