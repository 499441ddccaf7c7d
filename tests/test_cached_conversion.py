"""The per-user cache's conversions: made once, even when several processes ask at the same moment."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from finbert2.pretrained.folders import converted_once, staged_folder


def slow_conversion(folder: Path) -> None:
    """Writes the folder like a converter does (staged, renamed at the end), logging each call."""
    with (folder.parent / "calls.log").open("a", encoding="utf-8") as log:
        log.write("convert\n")
    with staged_folder(folder) as staging:
        time.sleep(1.0)  # long enough that the other processes arrive while this one converts
        (staging / "metrics.json").write_text(json.dumps({"ok": True}), encoding="utf-8")


def ask_for_conversion(folder: str) -> None:
    converted_once(Path(folder), slow_conversion)


def test_concurrent_processes_convert_once_and_all_get_the_folder(tmp_path):
    folder = tmp_path / "models" / "model-v1"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=ask_for_conversion, args=(str(folder),)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert (tmp_path / "models" / "calls.log").read_text(encoding="utf-8").splitlines() == ["convert"]
    assert json.loads((folder / "metrics.json").read_text(encoding="utf-8")) == {"ok": True}
    assert converted_once(folder, slow_conversion) == folder  # finished: no further call
    assert (tmp_path / "models" / "calls.log").read_text(encoding="utf-8").splitlines() == ["convert"]


def test_a_folder_left_by_a_killed_conversion_is_made_again(tmp_path):
    folder = tmp_path / "models" / "model-v1"
    folder.mkdir(parents=True)
    (folder / "half-written.bin").write_bytes(b"\0")  # no metrics.json: the conversion never finished
    assert converted_once(folder, slow_conversion) == folder
    assert sorted(path.name for path in folder.iterdir()) == ["metrics.json"]
