"""Weight-space merging of two checkpoints of one architecture (``finbert2 merge``; ``--merge_with_start``).

``merge_with_start`` is the entry point the pretraining stages call at the end of a run; see its docstring.
"""

from finbert2.merge.runner import merge_checkpoints, merge_with_start, parse_alpha

__all__ = ["merge_checkpoints", "merge_with_start", "parse_alpha"]
