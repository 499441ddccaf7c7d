"""FinEval and CFLUE to the question format: the real sets (counts), and hostile input (hypothesis): each run
either writes questions ``read_questions`` accepts (exit 0) or stops with one ``error: path...: reason`` line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT, require_public
from finbert2.config import parse_args
from finbert2.converters import cflue, fineval
from finbert2.numllm.questions import is_numeric, read_questions
from hostile import hostile_text, json_values
from test_converters_hostile import _csv, _run  # one error-line check (and CSV writer) for every converter

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAPPING = {"accounting": ["accounting", "会计", "Accounting"]}


cell = st.one_of(hostile_text, st.sampled_from(["A", "B", "D", "E", "", "净利润为多少？", "12%", "1"]))
fineval_csv = st.one_of(
    st.binary(max_size=200),
    st.builds(_csv, st.one_of(st.just(fineval.COLUMNS), st.lists(st.sampled_from(fineval.COLUMNS + ["x"]), max_size=8)),
              st.lists(st.lists(cell, min_size=6, max_size=8), max_size=4)),
)
mapping_bytes = st.one_of(st.just(json.dumps(MAPPING).encode()), st.binary(max_size=60),
                          json_values.map(lambda v: json.dumps({"accounting": v}).encode()))


@SETTINGS
@given(dev=fineval_csv, val=fineval_csv, test=fineval_csv, mapping=mapping_bytes)
def test_fineval_hostile(dev, val, test, mapping):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fineval" / "data"
        for folder, (_, suffix), content in zip(fineval.SPLITS, fineval.SPLITS.values(), (dev, val, test)):
            (root / folder).mkdir(parents=True)
            (root / folder / f"accounting{suffix}").write_bytes(content)
        (root / "subject_mapping.json").write_bytes(mapping)
        out = Path(tmp) / "out"
        if _run(fineval.main, ["--input_dir", str(root.parent), "--output_dir", str(out)], root.parent) == 0:
            for split in ("dev", "val", "test"):
                if (out / f"{split}.jsonl").read_text(encoding="utf-8").strip():
                    read_questions([out / f"{split}.jsonl"])


choices = st.one_of(hostile_text, st.sampled_from(["{'A': '对', 'B': '错'}", "{'A': '1', 'B': '2', 'C': '3', 'D': '4'}",
                                                   "{'A': 'x', 'C': 'y'}", "[1, 2]", "{'A': ''}", "{" * 500]))
entry = st.fixed_dictionaries({}, optional={
    "名称": st.one_of(hostile_text, st.just("注册会计师"), json_values), "task": st.sampled_from(
        ["单项选择题", "多项选择题", "判断题", "填空题", ""]), "question": st.one_of(hostile_text, json_values),
    "choices": choices, "answer": st.one_of(st.sampled_from(["A", "AB", "D", "BA", "E", "", "a, b"]), json_values)})
cflue_bytes = st.one_of(st.binary(max_size=200), st.lists(st.one_of(entry, json_values), max_size=4).map(
    lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")))


@SETTINGS
@given(content=cflue_bytes)
def test_cflue_hostile(content):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        (Path(tmp) / "data" / "knowledge.json").write_bytes(content)
        out = Path(tmp) / "out"
        if _run(cflue.main, ["--input_dir", tmp, "--output_dir", str(out)], Path(tmp)) == 0:
            for name in ("single", "multiple", "true_false"):
                if (out / f"{name}.jsonl").read_text(encoding="utf-8").strip():
                    read_questions([out / f"{name}.jsonl"])


def test_fineval_real(tmp_path):
    source = require_public("fineval-academic")
    counts = fineval.convert(source, tmp_path)
    assert (counts["dev"], counts["val"], counts["test"], counts["subjects"]) == (170, 3340, 918, 34)
    questions = read_questions([tmp_path / f"{s}.jsonl" for s in ("dev", "val", "test")])
    assert all(len(q.options) == 4 and q.single_answer for q in questions)
    assert {q.category for q in questions} == {"Accounting", "Certificate", "Economy", "Finance"}
    # SOURCE.md: 1,399 of the 4,428 rows have a digit; percentages and cue words add the rest of the numeric split
    assert sum(is_numeric(q) for q in questions) == 1633  # 1,399 with a digit (SOURCE.md) + cue words, operators


def test_cflue_real(tmp_path):
    source = require_public("cflue")
    assert cflue.convert(source, tmp_path) == {"single": 2345, "multiple": 1171, "true_false": 348}
    single = read_questions([tmp_path / "single.jsonl"])
    assert all(q.single_answer for q in single) and {len(q.options) for q in single} <= {2, 3, 4, 5, 6}


def test_numllm_configs_parse(tmp_path):
    """Every section of every shipped numllm config parses with its command's arguments."""
    from finbert2.numllm import args
    from finbert2.numllm.cli import _command_argv
    from finbert2.precision import PrecisionTrainingArguments
    from finbert2.run import RunArguments

    train = (args.CausalLMArguments, args.LoraArguments, args.NumLLMDataArguments, PrecisionTrainingArguments,
             RunArguments)
    out = ["--output_dir", str(tmp_path)]
    commands = {  # section: (dataclasses, what a user adds on the command line)
        "domain": (train, [*out, "--use_cpu", "True"]), "numeric": (train, [*out, "--use_cpu", "True"]),
        "build_numeric": ((args.BuildNumericArguments,), out),
        "merge": ((args.CausalLMArguments, args.MergeArguments), [*out, "--adapters", "a", "b"]),
        "evaluate": ((args.CausalLMArguments, args.EvaluateArguments), out),
    }
    configs = sorted((REPO_ROOT / "configs" / "numllm").glob("*.yaml"))
    assert [c.name for c in configs] == ["base.yaml", "gemma-270m.yaml", "tiny.yaml"]
    for config in configs:
        for section, (types, extra) in commands.items():
            parsed = parse_args(types, _command_argv(types, [str(config), *extra], section))
            if section in {"domain", "numeric"}:
                assert parsed[2].task == section, (config, section)
