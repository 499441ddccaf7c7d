"""Reports over run folders: metrics tables, loss curves, confusion matrices, comparison and topic tables."""

from finbert2.report.builder import build_report, find_run_dirs

__all__ = ["build_report", "find_run_dirs"]
