"""Training guards shared by every stage: NaN/inf stop or skip, and resume ignoring half-written checkpoints."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from finbert2.training import NonFiniteGuardCallback, NonFiniteLossError, is_complete_checkpoint, resume_checkpoint, standard_callbacks


class Regression(nn.Module):
    """y = w.x; the loss turns NaN on the calls listed in ``nan_calls``."""

    def __init__(self, nan_calls=()):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.nan_calls = set(nan_calls)
        self.calls = 0

    def forward(self, x, y):
        self.calls += 1
        loss = ((self.linear(x).squeeze(-1) - y) ** 2).mean()
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        return {"loss": loss}


class Points(torch.utils.data.Dataset):
    def __init__(self, n=64):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _trainer(model, out, skip=False, max_steps=12, learning_rate=0.02):
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8,
                             learning_rate=learning_rate, save_steps=4, logging_steps=1, report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=Points(), callbacks=standard_callbacks(out, skip))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = Regression(nan_calls={6})
    trainer = _trainer(model, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 6.*checkpoint-4"):
        trainer.train()
    assert torch.isfinite(model.linear.weight).all()  # stopped before the bad update
    assert resume_checkpoint(tmp_path).endswith("checkpoint-4")
    assert not (tmp_path / "checkpoint-8").exists()


def test_nan_steps_skipped_when_asked(tmp_path):
    model = Regression(nan_calls={3, 7})
    data = Points()
    before = ((model.linear(data.x).squeeze(-1) - data.y) ** 2).mean().item()
    trainer = _trainer(model, tmp_path, skip=True, max_steps=40, learning_rate=0.2)
    trainer.train()
    after = ((model.linear(data.x).squeeze(-1) - data.y) ** 2).mean().item()
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGuardCallback))
    assert guard.skipped_steps == 2
    assert torch.isfinite(model.linear.weight).all()
    assert after < 0.2 * before  # training carried on past the skipped steps and learned


def test_resume_skips_half_written_checkpoint(tmp_path):
    _trainer(Regression(), tmp_path, max_steps=8).train()
    assert is_complete_checkpoint(tmp_path / "checkpoint-8")
    # A kill while saving checkpoint-12: model written, trainer_state.json cut short.
    broken = tmp_path / "checkpoint-12"
    shutil.copytree(tmp_path / "checkpoint-8", broken)
    state = (broken / "trainer_state.json").read_text()
    (broken / "trainer_state.json").write_text(state[: len(state) // 2])
    assert not is_complete_checkpoint(broken)
    assert resume_checkpoint(tmp_path).endswith("checkpoint-8")
    (broken / "trainer_state.json").unlink()
    assert resume_checkpoint(tmp_path).endswith("checkpoint-8")
    assert resume_checkpoint(tmp_path, "explicit/path") == "explicit/path"
    assert resume_checkpoint(tmp_path / "absent") is None
