"""build-numeric's NumCT items, the question format and the numeric / non-numeric rule (no model needed)."""

from __future__ import annotations

import io
import json
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finbert2.numllm.cli import main as numllm_main
from finbert2.numllm.numeric_items import build_items, find_variables
from finbert2.numllm.questions import Question, is_numeric, read_questions, render_prompt
from tests.hostile import ERROR_FORMAT

SENTENCE = "公司2023年5月实现营业收入12.5亿元，同比增长23.4%。市盈率为15.2倍，共有员工3,200人。股票代码600519。"


def test_variables_found_with_kind_and_span():
    found = [(v.kind, SENTENCE[v.start:v.end]) for v in find_variables(SENTENCE)]
    # the stock code is a bare number: no unit, no cue, not a variable
    assert found == [("date", "2023年5月"), ("amount", "12.5亿元"), ("growth_rate", "23.4%"), ("ratio", "15.2倍"),
                     ("quantity", "3,200人")]
    assert [v.kind for v in find_variables("毛利率为35%，净利率下降1.2个百分点，资产负债率为0.45")] == \
        ["percentage", "growth_rate", "ratio"]


def test_grid_items_checked_by_hand():
    """The default construction: the true value, two perturbation axes and both together."""
    items = {q.category: q for q in build_items(SENTENCE, "corpus.txt:7", seed=42, max_items=5)}
    amount = items["amount"]
    assert amount.question == "公司2023年5月实现营业收入____，同比增长23.4%。\n横线处应填入的数值是？"
    # 12.5亿元 with x10 (125亿元), with 1<->2 swapped (21.5亿元) and with both (215亿元), shuffled
    assert amount.options == ["125亿元", "12.5亿元", "21.5亿元", "215亿元"] and amount.answer == "B"
    assert amount.extra["perturbations"] == {"A": "scaled", "B": "true", "C": "digit_swapped",
                                             "D": "digit_swapped+scaled"}
    date = items["date"]  # year -1 and month +1, alone and together
    assert date.options == ["2022年5月", "2022年6月", "2023年6月", "2023年5月"] and date.answer == "D"
    assert items["growth_rate"].options == ["2.34%", "32.4%", "3.24%", "23.4%"] and items["growth_rate"].answer == "D"
    quantity = items["quantity"]  # /10 drops the thousands separator below 1,000
    assert quantity.options == ["320人", "302人", "3,200人", "3,020人"] and quantity.answer == "C"
    for q in items.values():
        kinds = list(q.extra["perturbations"].values())
        single = {k for k in kinds if k != "true" and "+" not in k}
        (both,) = [k for k in kinds if "+" in k]
        assert kinds.count("true") == 1 and len(single) == 2 and set(both.split("+")) == single  # a 2 x 2 grid
        assert q.extra["true_value"] == q.options[q.answer_index]


def test_grid_needs_four_options_and_a_known_construction():
    with pytest.raises(ValueError, match="exactly 4 options"):
        build_items(SENTENCE, "a.txt:1", seed=1, n_options=5)
    with pytest.raises(ValueError, match="distractors must be one of grid, perturbed"):
        build_items(SENTENCE, "a.txt:1", seed=1, distractors="random")


def test_perturbed_items_checked_by_hand():
    items = build_items(SENTENCE, "corpus.txt:7", seed=42, max_items=5, distractors="perturbed")
    assert len(items) == 5
    by_kind = {q.category: q for q in items}
    amount = by_kind["amount"]
    assert amount.question == "公司2023年5月实现营业收入____，同比增长23.4%。\n横线处应填入的数值是？"
    assert amount.options[amount.answer_index] == "12.5亿元"
    # true value, unit changed, two digits swapped, scaled x10; shuffled with seed 42 and the source line
    assert amount.options == ["12.5亿元", "12.5万元", "21.5亿元", "125亿元"] and amount.answer == "A"
    assert amount.extra["perturbations"] == {"A": "true", "B": "unit_changed", "C": "digit_swapped", "D": "scaled"}
    growth = by_kind["growth_rate"]
    assert growth.question.startswith("公司2023年5月实现营业收入12.5亿元，同比增长____。")
    assert growth.options == ["-23.4%", "2.34%", "32.4%", "23.4%"] and growth.answer == "D"
    date = by_kind["date"]
    assert date.options == ["2024年5月", "2022年5月", "2023年5月", "2203年5月"] and date.answer == "C"
    quantity = by_kind["quantity"]  # thousands separators kept; x10 scaled down here
    assert quantity.options == ["320人", "3,020人", "3,200人", "3,200万人"] and quantity.answer == "C"
    # the ratio's context is its own sentence and the one before it
    assert by_kind["ratio"].question.startswith("公司2023年5月实现营业收入12.5亿元，同比增长23.4%。市盈率为____，")
    for q in items:
        assert q.source == "corpus.txt:7" and q.extra["source"] == "corpus.txt:7"
        assert q.extra["perturbations"][q.answer] == "true"
        assert q.extra["true_value"] == q.options[q.answer_index]
        assert q.subject == "金融数值"


def test_items_are_seeded_and_independent_of_the_rest_of_the_corpus():
    first = build_items(SENTENCE, "a.txt:1", seed=1, max_items=5)
    again = build_items(SENTENCE, "a.txt:1", seed=1, max_items=5)
    assert [(q.question, q.options, q.answer) for q in first] == [(q.question, q.options, q.answer) for q in again]
    other_seed = build_items(SENTENCE, "a.txt:1", seed=2, max_items=5)
    assert [q.options for q in first] != [q.options for q in other_seed]


@settings(max_examples=150, deadline=None)
@given(st.decimals(min_value=-10**7, max_value=10**7, places=2, allow_nan=False, allow_infinity=False),
       st.sampled_from(["%", "亿元", "万元", "元", "倍", "个百分点", "股"]), st.integers(0, 10**6),
       st.sampled_from(["营业收入为", "同比增长", "市盈率为", "总股本"]))
def test_true_value_once_and_every_option_distinct(number, unit, seed, cue):
    text = f"该公司{cue}{number}{unit}。"
    for distractors in ("grid", "perturbed"):
        for q in build_items(text, "x.txt:1", seed=seed, n_options=4, distractors=distractors):
            assert len(set(q.options)) == 4, q.options
            assert q.options.count(q.extra["true_value"]) == 1
            assert list(q.extra["perturbations"].values()).count("true") == 1


def _run(argv) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = numllm_main(argv)
    return code, stderr.getvalue()


def test_build_numeric_cli_writes_items_with_sources(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in
                                [SENTENCE, "没有数字的一句话。", "净利润同比下降8.5%，每股收益0.32元。"] * 4) + "\n",
                      encoding="utf-8")
    out = tmp_path / "items"
    code, err = _run(["build-numeric", "--input_data", str(corpus), "--heldout_percentage", "25",
                      "--output_dir", str(out)])
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["documents"] == 12 and metrics["heldout_documents"] == 3
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == metrics["train_items"] > 0
    for row in rows:
        line = int(row["source"].rsplit(":", 1)[1])
        assert row["source"].startswith(str(corpus)) and 1 <= line <= 12
        assert line % 3 != 2  # no item from the sentence without numbers
        assert row["prompt"] == render_prompt(read_questions_from_row(row, tmp_path))
        assert row["prompt"].endswith("答案：") and row["answer"] in "ABCD"
    heldout_sources = {json.loads(line)["source"] for line in (out / "heldout_text.jsonl").read_text().splitlines()}
    assert not heldout_sources & {row["source"] for row in rows}  # split by document
    read_questions([out / "train.jsonl", out / "heldout.jsonl"])  # evaluate reads them as questions


def read_questions_from_row(row: dict, folder) -> Question:
    path = folder / "one.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return read_questions([path])[0]


@pytest.mark.parametrize("content, line", [
    ('{"text": "营收12亿元"}\n{"text": 5}\n', 2),
    ('{"text": "营收12亿元"}\n\n{"txt": "x"}\n', 3),
    ('{"text": "营收12亿元"}\nnot json\n', 2),
])
def test_build_numeric_bad_input_names_file_and_line(tmp_path, content, line):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(content, encoding="utf-8")
    code, err = _run(["build-numeric", "--input_data", str(corpus), "--output_dir", str(tmp_path / "out")])
    assert code == 2
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and f"{corpus}:{line}: " in lines[0], err
    assert ERROR_FORMAT.match(lines[0][len("error: "):])
    assert not (tmp_path / "out").exists()  # nothing written before the input is known good


def test_question_records_bad_fields_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    good = {"question": "1+1=?", "options": ["1", "2"], "answer": "B", "subject": "数学"}
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in
                              [good, {**good, "answer": "C"}]) + "\n", encoding="utf-8")
    with pytest.raises(Exception, match=rf"{path}:2: field 'answer' is 'C'"):
        read_questions([path])


# (question, options, numeric?) labelled by hand: the rule is a digit, a percentage or an arithmetic cue
LABELLED = [
    ("甲公司2019年实现净利润500万元，其净资产收益率为____。", ["10%", "12%", "15%", "20%"], True),
    ("某债券面值100元，票面利率5$\\%$，则每年利息为____。", ["5元", "10元", "50元", "100元"], True),
    ("下列关于会计信息质量可比性要求的说法，正确的是____。", ["同一企业不同时期", "不同企业同一时期", "两者皆是", "两者皆非"], False),
    ("某企业的流动比率为多少时短期偿债能力较强？", ["较高", "较低", "适中", "无关"], True),
    ("计算该项目的净现值，应当采用____。", ["资本成本", "无风险利率", "通货膨胀率", "汇率"], True),
    ("货币政策工具不包括____。", ["公开市场操作", "再贴现", "存款准备金", "财政补贴"], False),
    ("审计报告的意见类型中，无法表示意见适用于____。", ["重大错报", "审计范围受限", "持续经营", "内部控制"], False),
    ("凯恩斯的流动性偏好理论认为，货币需求取决于____。", ["交易动机", "预防动机", "投机动机", "以上都是"], False),
    ("若年利率为8％，复利计息，两年后本息和约为____。", ["1.1664倍", "1.16倍", "1.08倍", "1.2倍"], True),
    ("资本资产定价模型中的贝塔系数衡量的是____。", ["系统风险", "非系统风险", "总风险", "信用风险"], False),
    ("某公司本年净利润为多少万元？已知收入800万元，成本650万元。", ["150", "160", "140", "130"], True),
    ("企业本期销售收入增加了百分之十，则____。", ["利润一定增加", "成本一定增加", "不一定", "以上都对"], True),
    ("下列属于流动负债的是____。", ["应付账款", "长期借款", "应付债券", "长期应付款"], False),
    ("A公司股票的β等于1.2，市场组合收益率10%，则____。", ["高于市场", "低于市场", "等于市场", "无法判断"], True),
    ("投资组合的期望收益率等于各资产收益率的____。", ["加权平均", "简单平均", "几何平均", "调和平均"], True),
    ("商业银行的核心资本包括____。", ["实收资本", "次级债", "重估储备", "一般准备"], False),
    ("汇率升值对出口的影响是____。", ["抑制", "促进", "无影响", "不确定"], False),
    ("总资产周转率=营业收入÷平均资产总额，其含义是____。", ["营运能力", "偿债能力", "盈利能力", "发展能力"], True),
    ("期货交易的保证金制度的作用是____。", ["控制风险", "增加收益", "减少交易", "提高价格"], False),
    ("静态投资回收期是指____。", ["收回投资所需时间", "项目寿命", "建设期", "经营期"], False),
]


def test_numeric_rule_on_labelled_questions():
    # Chinese numerals are left out on purpose (三方关系, 一般准备 are not numbers), so every numeric
    # question here has a digit, a percentage or an arithmetic cue
    assert len(LABELLED) == 20
    got = [is_numeric(Question(q, o, "A", "x")) for q, o, _ in LABELLED]
    assert got == [n for _, _, n in LABELLED]
    assert sum(got) == 10
