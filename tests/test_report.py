"""The report builder over any (partial) set of run folders."""

from __future__ import annotations

import base64
import re

from finbert2.data import write_json
from finbert2.report import build_report, find_run_dirs
from finbert2.run import write_metrics
from finbert2.training import LossLogCallback, plot_loss_curves


def _run(folder, stage, metrics=None, arguments=None):
    folder.mkdir(parents=True)
    write_json(folder / "run_config.json", {"stage": stage, "git_commit": "abc1234", "arguments": arguments or {}})
    if metrics is not None:
        write_metrics(folder, metrics)
    return folder


def _loss_curve(folder):
    callback = LossLogCallback(folder)

    class State:
        is_world_process_zero = True
        epoch = 1.0

    for step, loss in [(1, 4.0), (2, 3.0), (3, 2.5)]:
        State.global_step = step
        callback.on_log(None, State, None, logs={"loss": loss})
    return plot_loss_curves(folder)


def test_report_sections_from_partial_runs(tmp_path):
    root = tmp_path / "runs"
    mlm = _run(root / "mlm", "mlm", {"train_loss": 2.5, "perplexity": 12.0}, {"learning_rate": 6e-4})
    _loss_curve(mlm)
    ours = _run(root / "classify", "classify", {"test_macro_f1": 0.81, "test_accuracy": 0.85})
    _run(root / "classify_baseline", "classify", {"test_macro_f1": 0.74, "test_accuracy": 0.80})
    (ours / "confusion_matrix.png").write_bytes((mlm / "loss.png").read_bytes())
    retrieve = _run(root / "retrieve_eval", "retrieve", {"ndcg_at_10": 0.6})
    (retrieve / "comparison.md").write_text("| model | ndcg_at_10 |\n|---|---|\n| bm25 | 0.55 |\n| ours | 0.60 |\n")
    topics = _run(root / "topics", "topics", {"num_topics": 3})
    (topics / "topics.csv").write_text("id,size,words\n" + "".join(f"{i},{10 - i},词{i}\n" for i in range(20)))
    (topics / "doc_topics.csv").write_text("doc,topic\n1,0\n")
    _run(root / "retromae", "retromae")  # killed before finishing: no metrics

    assert len(find_run_dirs([root])) == 6
    summary = build_report([root], tmp_path / "report")
    assert summary == {"runs": 6, "images": 2, "finished_runs": 5}
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    # stages in pipeline order, each with its numbers
    assert [m for m in re.findall(r"^## (\S+)$", md, re.M)] == ["mlm", "retromae", "classify", "retrieve", "topics"]
    assert "| perplexity | 12 |" in md and "| learning_rate | 0.0006 |" in md
    assert "**Unfinished run**" in md
    assert "| classify | 0.81 | 0.85 |" in md and "| classify_baseline | 0.74 | 0.8 |" in md  # side by side
    assert "| bm25 | 0.55 |" in md
    assert "topics.csv (first 15 of 20 rows)" in md and "doc_topics.csv" not in md
    for image in re.findall(r"!\[[^]]*\]\((assets/[^)]+)\)", md):
        assert (tmp_path / "report" / image).read_bytes()[:4] == b"\x89PNG"

    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and base64.b64decode(images[0])[:4] == b"\x89PNG"
    assert not re.search(r'src="(?!data:)', page)  # self-contained: no external files
    assert "<td>bm25</td><td>0.55</td>" in page


def test_report_on_a_single_unfinished_run(tmp_path, run_cli):
    _run(tmp_path / "only", "mlm")
    result = run_cli("report", tmp_path / "only", "--output", tmp_path / "rep")
    assert result.returncode == 0, result.stderr
    assert "Unfinished run" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("report", empty, "--output", tmp_path / "rep2")
    assert result.returncode == 2 and "holds no run folder" in result.stderr
