"""Kill a training command with SIGKILL at random moments, resume it, and compare with an unbroken run.

Used by the per-stage fault-injection tests (issue 8: reliability). ``run_uninterrupted`` runs a
command once and notes how often it writes a checkpoint; ``run_with_kills`` runs the same command
(another ``output_dir``) and SIGKILLs its whole process group at a random moment after each new
checkpoint starts to appear, so kills land during training steps and during checkpoint writes
alike; the command is rerun unchanged, resumes from its last complete checkpoint, and after the
last kill runs to the end. ``assert_same_weights`` then compares the two final models.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from finbert2.training import checkpoint_step, is_complete_checkpoint, resume_checkpoint

FINISHED_MARKER = "metrics.json"  # written last by every stage (finbert2.run.write_metrics)
POLL_SECONDS = 0.05


@dataclass
class UninterruptedRun:
    seconds: float  # wall time of the whole process
    checkpoint_times: list[float]  # seconds after start at which each checkpoint folder appeared

    @property
    def checkpoint_interval(self) -> float:
        """Median seconds between two checkpoints (the whole run when there are fewer than two)."""
        gaps = [b - a for a, b in zip(self.checkpoint_times, self.checkpoint_times[1:])]
        return statistics.median(gaps) if gaps else self.seconds


@dataclass
class KillReport:
    kills: int  # processes SIGKILLed while still working (before the finished marker)
    attempts: int  # processes started, the final one included
    resumed_from: list[int] = field(default_factory=list)  # step of the checkpoint each restart resumed from
    half_written: int = 0  # checkpoint folders found incomplete right after a kill
    kill_delays: list[float] = field(default_factory=list)  # seconds after a new checkpoint appeared

    def summary(self) -> str:
        return (f"{self.kills} SIGKILLs survived in {self.attempts} processes; restarts resumed from steps "
                f"{self.resumed_from}; {self.half_written} half-written checkpoint(s) left by kills; "
                f"kill delays {[round(d, 2) for d in self.kill_delays]} s")


def _checkpoints(output_dir: Path) -> set[str]:
    if not output_dir.is_dir():
        return set()
    return {p.name for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) >= 0}


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""


def run_uninterrupted(command: list[str], output_dir: Path, cwd: Path, timeout: float = 900,
                      env: dict | None = None) -> UninterruptedRun:
    """Run ``command`` to the end, noting when each checkpoint folder of ``output_dir`` appears."""
    # stderr goes to a file: a pipe nobody reads fills up (tqdm, logs) and blocks the run.
    with tempfile.NamedTemporaryFile("w+b", suffix=".stderr", delete=False) as err:
        stderr_path = Path(err.name)
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, env=_env(env), stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
        seen: dict[str, float] = {}
        try:
            while process.poll() is None:
                if time.monotonic() - started > timeout:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    raise AssertionError(f"run timed out after {timeout} s: {' '.join(command)}")
                for name in _checkpoints(output_dir) - seen.keys():
                    seen[name] = time.monotonic() - started
                time.sleep(POLL_SECONDS)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise AssertionError(f"uninterrupted run failed (exit {process.returncode}):\n{_tail(stderr_path)}")
    stderr_path.unlink(missing_ok=True)
    return UninterruptedRun(seconds=seconds, checkpoint_times=sorted(seen.values()))


def run_with_kills(
    command: list[str],
    output_dir: Path,
    cwd: Path,
    kills: int = 3,
    seed: int = 0,
    min_delay: float = 0.0,
    max_delay: float = 6.0,
    wait_for: str = "checkpoint-",
    save_kills: int = 1,
    timeout: float = 900,
    env: dict | None = None,
) -> KillReport:
    """Run ``command`` until it has been SIGKILLed ``kills`` times, then once more to the end.

    Each kill comes ``min_delay``-``max_delay`` seconds (uniform, from ``random.Random(seed)``)
    after ``output_dir`` gains an entry whose name starts with ``wait_for`` during this attempt
    (right after start when ``wait_for`` is empty). Waiting for a new checkpoint guarantees that
    every attempt makes progress; a delay of 0 lands the kill inside the checkpoint write. A
    process that finishes before its kill ends the kills early (the report says how many there were).
    The first ``save_kills`` kills come with no delay, aimed inside the write of the checkpoint
    that just appeared (a tiny model's checkpoint takes a few hundred ms to write). ``env`` is
    added to the environment of every process.
    """
    rng = random.Random(seed)
    report = KillReport(kills=0, attempts=0)
    logs = Path(tempfile.mkdtemp(prefix="fault_injection_"))

    def start(attempt: int) -> tuple[subprocess.Popen, Path]:
        report.attempts += 1
        if report.attempts > 1:  # what this restart will resume from (-1: nothing, starts over)
            checkpoint = resume_checkpoint(output_dir)
            report.resumed_from.append(checkpoint_step(checkpoint) if checkpoint else -1)
        stderr_path = logs / f"attempt{attempt}.stderr"
        with stderr_path.open("wb") as err:
            process = subprocess.Popen(command, cwd=cwd, env=_env(env), stdout=subprocess.DEVNULL, stderr=err,
                                       start_new_session=True)
        return process, stderr_path

    attempt = 0
    while report.kills < kills:
        attempt += 1
        if (output_dir / FINISHED_MARKER).exists():
            break  # a previous process finished its work just before its kill
        before = _checkpoints(output_dir) if wait_for else set()
        process, stderr_path = start(attempt)
        started = time.monotonic()
        # Wait for training to be under way: a checkpoint this process writes.
        while wait_for and process.poll() is None and time.monotonic() - started < timeout:
            if {n for n in _checkpoints(output_dir) - before if n.startswith(wait_for)}:
                break
            time.sleep(POLL_SECONDS)
        delay = rng.uniform(min_delay, max_delay)  # drawn every time: the kill moments depend on seed only
        if report.kills < save_kills:
            delay = 0.0
        deadline = time.monotonic() + delay
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if (output_dir / FINISHED_MARKER).exists():
                break  # killed after its work was done: nothing was interrupted
            report.kills += 1
            report.kill_delays.append(delay)
            left = {name: is_complete_checkpoint(output_dir / name) for name in _checkpoints(output_dir)}
            report.half_written += sum(not complete for complete in left.values())
        elif process.returncode != 0:
            raise AssertionError(f"run failed before its kill (exit {process.returncode}):\n{_tail(stderr_path)}")
        else:
            break  # finished before its kill: nothing left to interrupt
    if not (output_dir / FINISHED_MARKER).exists():
        attempt += 1
        process, stderr_path = start(attempt)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise AssertionError(f"resumed run timed out after {timeout} s:\n{_tail(stderr_path)}") from None
        if returncode != 0:
            raise AssertionError(f"resumed run failed (exit {returncode}):\n{_tail(stderr_path)}")
    shutil.rmtree(logs, ignore_errors=True)  # kept only when a run failed (its stderr is in the error)
    print(f"\nfault injection ({' '.join(map(str, command[2:5]))} ...): {report.summary()}", file=sys.stderr)
    return report


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise AssertionError(f"{folder}: no safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys(), set(wa) ^ set(wb)
    return max((wa[n].float() - wb[n].float()).abs().max().item() for n in wa)


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys(), set(wa) ^ set(wb)
    for name in wa:
        assert torch.allclose(wa[name].float(), wb[name].float(), atol=atol, rtol=0), (
            f"{name}: max difference {(wa[name].float() - wb[name].float()).abs().max().item():.3g}"
        )
