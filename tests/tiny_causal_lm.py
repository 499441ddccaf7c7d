"""A tiny randomly initialised causal LM (2-layer Gemma3) and a byte-level BPE tokenizer trained here.

The numllm tests need a real causal LM with a real tokenizer but never a hub model: this one is
built in under a second from the demo corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_CORPUS = Path(__file__).resolve().parents[1] / "data" / "demo" / "corpus.jsonl"
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]


def train_tokenizer(texts: list[str], vocab_size: int = 800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def build_tiny_causal_lm(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer Gemma3ForCausalLM (hidden 64) with its tokenizer to ``folder``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    texts = [json.loads(line)["text"] for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines()[:400]]
    texts += ["答案：A B C D 横线处应填入的数值是？ 以下是中国关于考试的单项选择题，请选出其中的正确答案。"]
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        sliding_window=64, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Gemma3ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
