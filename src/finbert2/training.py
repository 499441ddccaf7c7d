"""Pieces every Trainer-based stage shares: resume, the loss log, the loss plot (precision: finbert2.precision)."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from finbert2.errors import FinBERT2Error

logger = logging.getLogger(__name__)

LOSS_LOG_FILE = "loss_log.csv"
LOSS_PLOT_FILE = "loss.png"
VALIDATION_PLOT_FILE = "validation.png"
LOSS_LOG_FIELDS = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm"]
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: str | Path) -> bool:
    """A checkpoint folder the Trainer finished writing.

    ``Trainer`` writes ``trainer_state.json`` last (after model, optimizer, scheduler and RNG
    state), so a run killed at any moment while saving leaves a folder whose state file is
    missing or does not parse: resume must not pick such a folder.
    """
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def checkpoint_step(path: str | Path) -> int:
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else -1


def logged_evaluation(state, training_args, key: str | None = None) -> dict[str, float] | None:
    """The validation scores logged at the step whose weights the model holds after training.

    With ``load_best_model_at_end`` that is the best checkpoint, else the last step. Reusing the logged
    scores saves encoding the validation data once more; None if that step was not evaluated. ``key``:
    the entry must hold it (a stage that logs several evaluation entries per step picks one).
    """
    if training_args.load_best_model_at_end and state.best_model_checkpoint:
        step = checkpoint_step(state.best_model_checkpoint)
    else:
        step = state.global_step
    for entry in reversed(state.log_history):
        if entry.get("step") == step and (key in entry if key else any(k.startswith("eval_") for k in entry)):
            return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}
    return None


def resume_checkpoint(output_dir: str | Path, resume_from_checkpoint: str | bool | None = None) -> str | None:
    """The checkpoint to resume from: an explicit one, else the latest complete one in ``output_dir``."""
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint not in {"", "True", "False"}:
        return resume_from_checkpoint
    if resume_from_checkpoint in (False, "False"):
        return None
    if not Path(output_dir).is_dir():
        return None
    checkpoints = sorted((p for p in Path(output_dir).iterdir() if p.is_dir() and checkpoint_step(p) >= 0),
                         key=checkpoint_step, reverse=True)
    for checkpoint in checkpoints:
        if is_complete_checkpoint(checkpoint):
            logger.info("resuming from %s", checkpoint)
            return str(checkpoint)
        logger.warning("skipping %s: half-written (the run was killed while saving it)", checkpoint)
    return None


class NonFiniteLossError(FinBERT2Error):
    """Training met a NaN or infinite loss."""


class NonFiniteGuardCallback(TrainerCallback):
    """Stop at the first optimizer step whose gradients are NaN/inf (a NaN loss makes them so).

    The check runs before the optimizer step, so the weights and every checkpoint already saved
    stay good. With ``skip=True`` the step is skipped instead: gradients are dropped, which torch
    optimizers treat as "no update" for those parameters (no moment decay, no weight decay).
    """

    def __init__(self, output_dir: str | Path, skip: bool = False):
        self.output_dir = Path(output_dir)
        self.skip = skip
        self.skipped_steps = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if bool(finite):
            return
        step = state.global_step + 1
        if self.skip:
            self.skipped_steps += 1
            logger.warning("step %d: non-finite loss/gradients, step skipped (%d so far)", step, self.skipped_steps)
            for parameter in model.parameters():
                parameter.grad = None
            return
        last_good = resume_checkpoint(self.output_dir)
        raise NonFiniteLossError(
            f"{self.output_dir}: non-finite loss at step {step}; stopped before updating the weights. "
            f"Last good checkpoint: {last_good or 'none'}. Lower the learning rate, or pass "
            "--skip_nonfinite_steps True to skip such steps"
        )


def standard_callbacks(output_dir: str | Path, skip_nonfinite_steps: bool = False) -> list[TrainerCallback]:
    """The callbacks every training stage adds: the loss log and the NaN/inf guard."""
    return [LossLogCallback(output_dir), NonFiniteGuardCallback(output_dir, skip=skip_nonfinite_steps)]


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


def plot_loss_curves(output_dir: str | Path, title: str = "", columns: list[str] | None = None,
                     log_scale: bool = False) -> Path | None:
    """Plot the loss columns of ``loss_log.csv`` to ``loss.png`` (``log_scale``: for parts of different size);
    returns the path (None without a log)."""
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
    if log_scale:
        ax.set_yscale("log")
    return _finish_step_plot(fig, ax, "loss", title or Path(output_dir).name, Path(output_dir) / LOSS_PLOT_FILE)


def _finish_step_plot(fig, ax, ylabel: str, title: str, out: Path) -> Path:
    """Label, grid, legend and save a per-step figure (the loss and validation plots share the look)."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_validation_curve(output_dir: str | Path, metric: str, start: float | None = None) -> Path | None:
    """Plot ``metric`` from ``loss_log.csv`` against the step to ``validation.png``, the untrained start dashed."""
    log_path = Path(output_dir) / LOSS_LOG_FILE
    points = read_loss_log(log_path).get(metric) if log_path.exists() else None
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, values, marker="o", markersize=3, label=metric)
    if start is not None:
        ax.axhline(start, color="grey", linestyle="--", label="untrained start")
    return _finish_step_plot(fig, ax, metric, f"{Path(output_dir).name}: validation",
                             Path(output_dir) / VALIDATION_PLOT_FILE)


def grouped_parameters(model, decay_names: set[str], weight_decay: float, head_lr: float, encoder_lr: float,
                       is_head: Callable[[str], bool]) -> list[dict]:
    """Optimizer groups: head / encoder x decay / no decay, each with its learning rate and a ``part`` key
    (``per_group_schedule`` reads it). Only parameters that train now are included (frozen embeddings stay out)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = "head" if is_head(name) else "encoder"
            groups.setdefault((part, name in decay_names), []).append(parameter)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0,
             "lr": head_lr if part == "head" else encoder_lr, "part": part}
            for (part, decays), params in sorted(groups.items())]
