"""jieba set up once for the whole toolkit: quiet, and keeping its dictionary cache in the user cache.

On first use jieba writes a ~9 MB cache of its dictionary into the system temp folder. A run writes
only into its ``output_dir`` and, like the Hugging Face hub cache, into one per-user cache folder
(``cache_dir()``), so every segmenter the toolkit makes is created here and caches under it.
"""

from __future__ import annotations

import functools
import logging

import jieba

from finbert2.cache import cache_dir

jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary loading at INFO otherwise


def new_segmenter() -> jieba.Tokenizer:
    """A private ``jieba.Tokenizer`` (user words added to it never reach jieba's global one)."""
    segmenter = jieba.Tokenizer()
    folder = cache_dir() / "jieba"
    folder.mkdir(parents=True, exist_ok=True)
    segmenter.tmp_dir = str(folder)
    return segmenter


@functools.lru_cache(maxsize=1)
def default_segmenter() -> jieba.Tokenizer:
    """One shared segmenter with jieba's own dictionary, for plain word splitting."""
    return new_segmenter()
