"""The per-user cache: the only place a run writes outside its output_dir.

jieba's dictionary cache (``finbert2.segmentation``) lives here, and so does torch's inductor
cache, which torch creates in the system temp folder when some of its modules are imported, even
when nothing is compiled. A user's own setting of either location wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FINBERT2_CACHE``, else ``$XDG_CACHE_HOME/finbert2``, else ``~/.cache/finbert2``."""
    if os.environ.get("FINBERT2_CACHE"):
        return Path(os.environ["FINBERT2_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "finbert2"


def keep_library_caches_in_user_cache() -> None:
    """Point caches that libraries put in the system temp folder at ``cache_dir()``; must run before
    torch is imported (``finbert2/__init__`` calls it)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
