"""scripts/get_public_data.sh: pinned sources, sha256 checks, all-or-nothing layout."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, require_public

from finbert2.data.public import arrow_to_jsonl, load_manifest

SETS = ["jingewu-financial-sentiment-analysis", "cflue", "fin-eva"]


def _mirror(tmp_path, names):
    """A local mirror laid out as <repo>/<commit>/<source path>, built from the shared copies."""
    mirror = tmp_path / "mirror"
    for dataset in (d for d in load_manifest() if d["name"] in names):
        for entry in dataset["files"]:
            target = mirror / entry.get("repo", dataset["repo"]) / entry.get("commit", dataset["commit"]) / entry["source"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((require_public(dataset["name"]) / entry["path"]).read_bytes())
    return mirror


def _fetch(output, mirror, *names):
    return subprocess.run(["sh", str(REPO_ROOT / "scripts" / "get_public_data.sh"), str(output), "--mirror", str(mirror),
                           "--only", *names], capture_output=True, text=True, cwd=REPO_ROOT)


def test_manifest_pins_commits_and_sums():
    manifest = load_manifest()
    assert {d["name"] for d in manifest} >= {"cfbenchmark-basic", "fin-eva", "finbert2-upstream", "fineval-academic",
                                             "cflue", "jingewu-financial-sentiment-analysis"}
    for dataset in manifest:
        assert dataset["license"] and dataset["files"]
        assert len(dataset.get("commit", "0" * 40)) == 40 or "pypi" in dataset
        assert all(len(f["sha256"]) == 64 for f in dataset["files"])


def test_the_sums_match_the_data_the_suite_uses():
    for dataset in load_manifest():
        root = require_public(dataset["name"])
        for entry in dataset["files"]:
            assert hashlib.sha256((root / entry["path"]).read_bytes()).hexdigest() == entry["sha256"], entry["path"]


def test_fetch_from_a_mirror_lays_the_data_out_as_the_converters_expect(tmp_path):
    out = tmp_path / "public"
    result = _fetch(out, _mirror(tmp_path, SETS), *SETS)
    assert result.returncode == 0, result.stderr
    for name in SETS:
        for entry in next(d for d in load_manifest() if d["name"] == name)["files"]:
            assert (out / name / entry["path"]).read_bytes() == (require_public(name) / entry["path"]).read_bytes()
        assert "commit" in (out / name / "SOURCE.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == sorted(SETS)  # no staging folder left
    from finbert2.converters.fin_eva import convert  # the converter reads the fetched layout
    assert convert(out / "fin-eva", tmp_path / "fe")["pairs"] == 1518


def test_a_corrupted_file_is_named_and_nothing_is_laid_out(tmp_path):
    mirror = _mirror(tmp_path, SETS)
    cflue = next(d for d in load_manifest() if d["name"] == "cflue")
    bad = mirror / cflue["repo"] / cflue["commit"] / cflue["files"][0]["source"]
    bad.write_bytes(bad.read_bytes()[:-10] + b"corrupted!")
    out = tmp_path / "public"
    result = _fetch(out, mirror, *SETS)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "knowledge.json" in result.stderr and "sha256 mismatch" in result.stderr
    assert list(out.iterdir()) == []  # not even the sets fetched before the bad one


def test_unknown_set_and_missing_mirror_file_are_one_line_errors(tmp_path):
    result = _fetch(tmp_path / "o", tmp_path / "nowhere", "no-such-set")
    assert result.returncode == 2 and "unknown data set(s): no-such-set" in result.stderr
    result = _fetch(tmp_path / "o", tmp_path / "nowhere", "cflue")
    assert result.returncode == 2 and "cannot download" in result.stderr and "knowledge.json" in result.stderr


def test_arrow_stream_becomes_the_jsonl_the_converters_read():
    pa = pytest.importorskip("pyarrow")
    rows = [{"input": "营收增长12.5%", "response": "积极"}, {"input": "亏损", "response": "消极"}]
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    text = arrow_to_jsonl(sink.getvalue().to_pybytes()).decode("utf-8")
    assert [json.loads(line) for line in text.splitlines()] == rows
    assert text.splitlines()[0] == json.dumps(rows[0], ensure_ascii=False)


def test_cli_help_runs():
    result = subprocess.run([sys.executable, "-m", "finbert2.data.public", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--mirror" in result.stdout
