"""The run folder contract (DESIGN.md section 3): run_config.json, metrics.json, a log, no silent overwrite.

``metrics.json`` is written last and atomically: its presence marks a finished run. A run refuses
an ``output_dir`` holding one unless told to overwrite, and an overwrite removes the old marker
first, so a failed rerun never leaves a ``metrics.json`` that looks like its own.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import finbert2
from finbert2.data.writers import write_json
from finbert2.errors import OutputDirError

METRICS_FILE = "metrics.json"
RUN_CONFIG_FILE = "run_config.json"
LOG_FILE = "run.log"

logger = logging.getLogger("finbert2")


@dataclass
class RunArguments:
    """Arguments every stage shares, besides its ``output_dir``."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a finished run in output_dir (one holding metrics.json). Off: refuse."},
    )
    skip_nonfinite_steps: bool = field(
        default=False,
        metadata={"help": "Training stages: skip an optimizer step whose loss is NaN/inf instead of stopping the run."},
    )


def is_finished_run(output_dir: str | Path) -> bool:
    return (Path(output_dir) / METRICS_FILE).is_file()


def prepare_output_dir(output_dir: str | Path, overwrite: bool = False, clear: bool = False) -> Path:
    """Make ``output_dir`` ready for a run.

    A finished run (``metrics.json`` present) is refused unless ``overwrite``; with ``overwrite``
    its metrics marker goes first and, with ``clear``, the whole folder (stages that cannot
    resume start clean). A folder without the marker is an unfinished run: kept, so training
    resumes from its checkpoints.
    """
    output_dir = Path(output_dir)
    if is_finished_run(output_dir):
        if not overwrite:
            raise OutputDirError(
                f"{output_dir}: holds a finished run ({METRICS_FILE}); pass --overwrite_output_dir True "
                "to replace it, or choose another --output_dir"
            )
        (output_dir / METRICS_FILE).unlink()
        if clear:
            shutil.rmtree(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"{output_dir}: exists and is not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def git_commit() -> str | None:
    """The commit of the checkout the package runs from, if it is one."""
    root = Path(finbert2.__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _to_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict"):  # TrainingArguments hides tokens and resolves enums there
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _declared_defaults(obj: Any) -> dict[str, Any]:
    """Each field's declared default. (Not a fresh instance: building a second TrainingArguments
    under torchrun touches the distributed state and aborted rank 0.)"""
    defaults = {}
    for f in dataclasses.fields(obj):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _same_as_default(value: Any, default: Any) -> bool:
    value, default = _plain(value), _plain(default)
    if json.dumps(value, default=str) == json.dumps(default, default=str):
        return True
    empty = (None, "", [], {})
    if value in empty and default in empty:  # e.g. debug "" resolved to []
        return True
    # None means "resolve it for me": what __post_init__ filled in (a logging folder, an
    # accelerator config, a bool from the log level) is a default the user did not choose
    if default is None:
        return isinstance(value, bool) or not isinstance(value, (int, float, str))
    return False


def changed_arguments(obj: Any, resolved: dict[str, Any]) -> list[str]:
    """Names of the arguments whose resolved value is not the declared default (what a reader of
    the run wants to see; the rest are the stage's documented defaults). Required ones always count."""
    if not dataclasses.is_dataclass(obj):
        return list(resolved)
    defaults = _declared_defaults(obj)
    precision = getattr(obj, "precision", None)
    if precision is not None and "bf16" in resolved:  # auto resolved to a bool is still the default
        resolved = {**resolved, "bf16": precision.requested}
    return [name for name, value in resolved.items() if name not in defaults or not _same_as_default(value, defaults[name])]


def write_run_config(output_dir: str | Path, *args_objects: Any, stage: str, extra: dict | None = None) -> dict:
    """Record every resolved argument (and which differ from their defaults), the package version,
    the git commit and the command."""
    arguments: dict[str, Any] = {}
    changed: list[str] = []
    for obj in args_objects:
        resolved = _to_dict(obj)
        arguments.update(resolved)
        changed += [name for name in changed_arguments(obj, resolved) if name not in changed]
    record = {
        "stage": stage,
        "finbert2_version": finbert2.__version__,
        "git_commit": git_commit(),
        "command": sys.argv,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "arguments": arguments,
        "changed_arguments": changed,
    }
    from finbert2.precision import precision_of

    precision = precision_of(*args_objects)
    if precision is not None:  # a Trainer stage: its --bf16 resolved (commands pass theirs in extra)
        record["precision"] = precision.record()
    if extra:
        record.update(extra)
    if "precision" in record:
        logging.getLogger("finbert2").info("precision: %s (--bf16 %s: %s)", "bf16 autocast" if record["precision"]["bf16"]
                                           else "fp32", record["precision"]["requested"], record["precision"]["reason"])
    write_json(Path(output_dir) / RUN_CONFIG_FILE, record)
    return record


def _json_number(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write the flat ``metrics.json`` that marks the run finished (atomically, last)."""
    flat = {key: _json_number(value) for key, value in metrics.items()}
    write_json(Path(output_dir) / METRICS_FILE, flat)
    return flat


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def read_metrics(output_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / METRICS_FILE).read_text(encoding="utf-8"))


def setup_logging(output_dir: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``output_dir/run.log`` (appending, so resumed runs keep history)."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(getattr(h, "_finbert2_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(formatter)
        console._finbert2_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    if output_dir is not None:
        log_path = os.path.abspath(Path(output_dir) / LOG_FILE)
        for handler in list(root.handlers):
            if getattr(handler, "_finbert2_file", False):
                root.removeHandler(handler)
                handler.close()
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        file_handler.setFormatter(formatter)
        file_handler._finbert2_file = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)


def start_training_run(output_dir: str | Path, training_args: Any, run_args: RunArguments, *args_objects: Any,
                       stage: str, data_summary: dict) -> bool:
    """Make ``output_dir`` ready and record the run on the main process while the others wait; every
    process logs (the main one to ``run.log`` too). Returns whether this is the main process."""
    is_main = training_args.process_index == 0
    if is_main:
        prepare_output_dir(output_dir, overwrite=run_args.overwrite_output_dir)
    training_args.distributed_state.wait_for_everyone()
    setup_logging(output_dir if is_main else None)
    if is_main:
        write_run_config(output_dir, *args_objects, training_args, run_args, stage=stage,
                         extra={"data": data_summary, "world_size": training_args.world_size})
    return is_main
