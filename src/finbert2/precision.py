"""``--bf16 auto|true|false`` for every command that runs a model, resolved in one place.

``auto`` (the default) turns bf16 autocast on where the hardware runs it natively: a CUDA GPU with
bf16, or a CPU with AVX512-BF16 or AMX, where bf16 matmul measured ~3.5x fp32 on 2 cores. Elsewhere
oneDNN emulates bf16 and a BERT training step ran ~15x slower than fp32 on an AVX2-only CPU, so
``auto`` keeps fp32 there. The choice and its reason go to ``run.log`` and ``run_config.json``
(``precision``), never decided from one machine's measurement.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from finbert2.errors import ConfigError

logger = logging.getLogger("finbert2")

CHOICES = ("auto", "true", "false")
HELP = ("bf16 autocast: auto (on where the hardware runs bf16 natively: a bf16 CUDA GPU, or a CPU with "
        "AVX512-BF16/AMX; fp32 elsewhere), true or false.")
NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
DISABLE_ENV = "FINBERT2_DISABLE_BF16"  # any value: auto resolves to fp32 (e.g. to compare precisions)


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 flags this CPU reports (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        return []
    return [flag for flag in NATIVE_CPU_FLAGS if flag in words]


def native_bf16(use_cpu: bool = False) -> tuple[bool, str]:
    """Whether bf16 runs natively on the device a run will use, and why."""
    import torch

    if torch.cuda.is_available() and not use_cpu:
        if torch.cuda.is_bf16_supported():
            return True, f"CUDA device {torch.cuda.get_device_name(0)} supports bf16"
        return False, f"CUDA device {torch.cuda.get_device_name(0)} has no bf16"
    flags = cpu_bf16_flags()
    if flags:
        return True, f"CPU has {', '.join(flags)} (native bf16 matmul)"
    return False, "CPU has neither AMX nor AVX512-BF16 (bf16 would be emulated, slower than fp32)"


@dataclass(frozen=True)
class Precision:
    requested: str  # auto | true | false
    bf16: bool
    reason: str

    @property
    def message(self) -> str:
        return f"precision: {'bf16 autocast' if self.bf16 else 'fp32'} (--bf16 {self.requested}: {self.reason})"

    def record(self) -> dict:
        return {"requested": self.requested, "bf16": self.bf16, "reason": self.reason}


def normalise(value: str | bool | None) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    aliases = {"1": "true", "yes": "true", "y": "true", "0": "false", "no": "false", "n": "false"}
    text = aliases.get(text, text)
    if text not in CHOICES:
        raise ConfigError(f"--bf16 must be one of auto, true, false; got {value!r}")
    return text


def resolve_bf16(value: str | bool | None, use_cpu: bool = False) -> Precision:
    """``auto`` -> native bf16 or fp32; ``true`` is honoured (with a warning when it would be emulated)."""
    requested = normalise(value)
    if requested == "false":
        return Precision(requested, False, "asked for fp32")
    native, why = native_bf16(use_cpu)
    if requested == "true":
        if not native:
            logger.warning("--bf16 true: %s", why)
        return Precision(requested, True, f"asked for; {why}")
    if os.environ.get(DISABLE_ENV):
        return Precision(requested, False, f"{DISABLE_ENV} is set")
    return Precision(requested, native, why)


def bf16_field(default: str = "auto"):
    """The ``bf16`` dataclass field of a non-Trainer command (resolve it with ``resolve_bf16``)."""
    return field(default=default, metadata={"help": HELP})


@dataclass
class PrecisionTrainingArguments(TrainingArguments):
    """``TrainingArguments`` whose ``bf16`` also takes ``auto`` (the default), resolved before the Trainer's
    own validation; the resolution is kept as ``precision`` for the run record."""

    bf16: str = field(default="auto", metadata={"help": HELP})

    def __post_init__(self):
        import torch

        self.precision = resolve_bf16(self.bf16, use_cpu=bool(self.use_cpu))
        self.bf16 = self.precision.bf16
        if self.bf16 and not torch.cuda.is_available():
            # The Trainer refuses bf16 on a host without a bf16 GPU unless told the run is on the CPU,
            # which it is anyway here; without this, auto would abort every training run on an AMX CPU.
            self.use_cpu = True
        super().__post_init__()


def precision_of(*args_objects) -> Precision | None:
    """The resolved precision carried by any of the arguments objects (Trainer stages)."""
    for obj in args_objects:
        precision = getattr(obj, "precision", None)
        if isinstance(precision, Precision):
            return precision
    return None


def command_bf16(args, use_cpu: bool = False) -> bool:
    """Resolve a command's ``--bf16`` field, keep the resolution on ``args`` (``write_run_config`` records it)
    and log it; returns whether to autocast."""
    args.precision = resolve_bf16(args.bf16, use_cpu)
    logger.info(args.precision.message)
    return args.precision.bf16
