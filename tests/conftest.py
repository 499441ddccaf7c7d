"""Shared fixtures: repo paths, the public data folder, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "data" / "demo"


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
