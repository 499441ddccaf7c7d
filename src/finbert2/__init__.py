"""FinBERT2 toolkit: rebuild and use the Chinese financial BERT suite (KDD 2025)."""

from finbert2.cache import keep_library_caches_in_user_cache

__version__ = "0.1.0"

keep_library_caches_in_user_cache()  # before any stage imports torch
