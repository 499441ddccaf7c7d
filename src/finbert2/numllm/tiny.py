"""A tiny randomly initialised causal LM (Gemma3) over a byte-level BPE tokenizer trained on the run's own text.

The NumLLM counterpart of the encoder stages' from-scratch BERT: ``finbert2 numllm train`` without
``model_name_or_path`` starts from one, so ``configs/numllm/tiny.yaml`` runs offline in seconds with only
``--output_dir``. Unlike an encoder stage, a LoRA run saves an adapter that names its base by path (the
merge and the evaluation load that base again), so the model is saved once, in the user cache, under a
key of everything that makes it (texts, sizes, seed): the domain and numeric runs of one corpus get the
same base, and a later ``merge``/``evaluate`` finds it through the adapters.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from finbert2.cache import cache_dir
from finbert2.pretrained.folders import converted_once, staged_folder

logger = logging.getLogger("finbert2.numllm")

BUILDER_VERSION = 1  # part of the cache key: bump when the model or tokenizer built changes
TOKENIZER_TEXTS = 400  # documents the BPE tokenizer learns from (the first ones)
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
# the words of the item and evaluation prompts, so the tokenizer has them whatever the corpus
PROMPT_WORDS = "答案：A B C D 横线处应填入的数值是？ 以下是中国关于考试的单项选择题，请选出其中的正确答案。"


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer (gemma-style specials, ``<bos>`` prepended) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts), trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def save_tiny_causal_lm(folder: str | Path, texts: Sequence[str], hidden_size: int = 64, num_hidden_layers: int = 2,
                        vocab_size: int = 800, seed: int = 0) -> Path:
    """Save a randomly initialised ``Gemma3ForCausalLM`` and its tokenizer (trained on ``texts``) to ``folder``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = train_bpe_tokenizer([*texts[:TOKENIZER_TEXTS], PROMPT_WORDS], vocab_size)
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=2, num_key_value_heads=1,
        head_dim=hidden_size // 2, max_position_embeddings=512, sliding_window=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    folder = Path(folder)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cached_tiny_causal_lm(texts: Sequence[str], hidden_size: int = 64, num_hidden_layers: int = 2,
                          vocab_size: int = 800, seed: int = 0) -> Path:
    """The tiny causal LM for ``texts`` from the user cache, built there (under a second) when absent."""
    sizes = {"version": BUILDER_VERSION, "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
             "vocab_size": vocab_size, "seed": seed}
    digest = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode("utf-8"))
    for text in texts[:TOKENIZER_TEXTS]:
        digest.update(text.encode("utf-8") + b"\0")

    def build(folder: Path) -> None:
        with staged_folder(folder) as staging:  # all of it appears, or none
            save_tiny_causal_lm(staging, texts, hidden_size, num_hidden_layers, vocab_size, seed)
        logger.info("built a random tiny causal LM (Gemma3, %d layers, hidden %d) in %s", num_hidden_layers,
                    hidden_size, folder)

    return converted_once(cache_dir() / "models" / f"tiny-causal-lm-{digest.hexdigest()[:12]}", build,
                          marker="config.json")
