"""Pieces every Trainer-based stage shares: resume, the loss log, the loss plot, bf16 availability."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)

LOSS_LOG_FILE = "loss_log.csv"
LOSS_PLOT_FILE = "loss.png"
LOSS_LOG_FIELDS = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm"]


def resume_checkpoint(output_dir: str | Path, resume_from_checkpoint: str | bool | None = None) -> str | None:
    """The checkpoint to resume from: an explicit one, else the latest in ``output_dir``, else none."""
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint not in {"", "True", "False"}:
        return resume_from_checkpoint
    if resume_from_checkpoint in (False, "False"):
        return None
    if not Path(output_dir).is_dir():
        return None
    checkpoint = get_last_checkpoint(str(output_dir))
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    return checkpoint


class LossLogCallback(TrainerCallback):
    """Append every logged loss to ``output_dir/loss_log.csv`` (main process only).

    The file survives a resume; rows logged after the last checkpoint of a killed run reappear
    when those steps are retrained, and readers keep the last row of each step.
    """

    def __init__(self, output_dir: str | Path, extra_fields: list[str] | None = None):
        self.path = Path(output_dir) / LOSS_LOG_FILE
        self.fields = LOSS_LOG_FIELDS + [f for f in (extra_fields or []) if f not in LOSS_LOG_FIELDS]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch)}
        row.update({name: logs[name] for name in self.fields if name in logs and name not in row})
        if not any(name in row for name in self.fields[2:]):
            return  # e.g. the final train summary without a loss
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if new_file:
                writer.writeheader()
            writer.writerow(row)


def read_loss_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{column: [(step, value), ...]}`` with the last value of each step kept."""
    series: dict[str, dict[int, float]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = int(float(row["step"]))
            for name, value in row.items():
                if name in {"step", "epoch"} or value in (None, ""):
                    continue
                series.setdefault(name, {})[step] = float(value)
    return {name: sorted(points.items()) for name, points in series.items()}


def plot_loss_curves(output_dir: str | Path, title: str = "", columns: list[str] | None = None) -> Path | None:
    """Plot the loss columns of ``loss_log.csv`` to ``loss.png``; returns the path (None without a log)."""
    log_path = Path(output_dir) / LOSS_LOG_FILE
    if not log_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_loss_log(log_path)
    columns = columns or [name for name in series if "loss" in name]
    if not columns:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in columns:
        if name in series:
            steps, values = zip(*series[name])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or Path(output_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(output_dir) / LOSS_PLOT_FILE
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def bf16_available() -> bool:
    """bf16 autocast is worth turning on: a CUDA GPU with bf16, or a CPU (where oneDNN runs it fast)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return os.environ.get("FINBERT2_DISABLE_BF16", "") == ""
