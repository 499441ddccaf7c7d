"""jieba set up once for the whole toolkit: quiet, and keeping its dictionary cache in the user cache.

On first use jieba writes a ~9 MB cache of its dictionary into the system temp folder. A run writes
only into its ``output_dir`` and, like the Hugging Face hub cache, into one per-user cache folder
(``cache_dir()``), so every segmenter the toolkit makes is created here and caches under it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jieba

from finbert2.cache import cache_dir
from finbert2.errors import DataError

jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary loading at INFO otherwise


def new_segmenter(user_dict: str | Path | None = None) -> jieba.Tokenizer:
    """A private ``jieba.Tokenizer`` (user words added to it never reach jieba's global one),
    with ``user_dict`` loaded when given."""
    segmenter = jieba.Tokenizer()
    folder = cache_dir() / "jieba"
    folder.mkdir(parents=True, exist_ok=True)
    segmenter.tmp_dir = str(folder)
    if user_dict:
        if not Path(user_dict).is_file():
            raise DataError(user_dict, None, "no such jieba user dictionary")
        segmenter.load_userdict(str(user_dict))
    return segmenter


@functools.lru_cache(maxsize=1)
def default_segmenter() -> jieba.Tokenizer:
    """One shared segmenter with jieba's own dictionary, for plain word splitting."""
    return new_segmenter()
