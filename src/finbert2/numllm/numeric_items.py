"""NumCT-style items: multiple-choice questions whose options differ only in a numeric variable.

NumLLM (Su et al., 2024) tunes one LoRA module on "numeric-sensitive choice" items built from
financial textbooks; its exact recipe is not public. This is ours, from any financial text:

1. Find numeric variables (``find_variables``): dates (``2023年5月``), percentages (``12.5%``),
   growth rates (a percentage or ``个百分点`` right after a cue such as 增长/下降/同比), ratios
   (``3.2倍``, or a bare number right after 市盈率/比率/比例/...率为), amounts (a number with a currency unit:
   元/万元/亿元/美元...) and quantities (股/家/人/户/只). Bare numbers with no unit or cue (stock codes,
   list numbers) are not variables.
2. For each chosen variable the question is its sentence, with the preceding sentence as context,
   the variable replaced by ``____``, and ``横线处应填入的数值是？``.
3. Options (``distractors="grid"``, the default): two perturbation axes are drawn (seeded) from
   scaled (x10 or /10), sign-flipped, digit-swapped (two adjacent different digits) and unit changed
   (亿元<->万元, % <-> 个百分点, 倍 -> %); dates: year +-1, month +-1, year digits swapped. The four
   options are the true value, each axis alone and both together: a 2 x 2 grid, so each option
   differs from two others by one perturbation and from the third by two, and none stands out as
   the one the others were made from. ``distractors="perturbed"`` (the first construction) takes
   the true value and n-1 single perturbations of it instead; then the true value is the centre
   of the options and a no-model heuristic finds it (the option closest to the others by edit
   distance: 88% on held-out CFBenchmark items, see Fin-numllm/README.md). Every option is a
   distinct string and the true value appears exactly once.
4. The options are shuffled and the answer is the true value's letter. Every random choice is
   seeded by ``seed`` and the item's source line, so the same text gives the same items whatever
   else is in the corpus.

Departures from the paper: its items come from textbook passages chosen and checked by people, and
its options may perturb several variables; here one variable per question, perturbed by rules,
from any corpus, unchecked (a blanked value is not always recoverable from its context).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from finbert2.numllm.questions import LETTERS, Question, question_record, render_prompt

SUBJECT = "金融数值"
BLANK = "____"
QUESTION_SUFFIX = "\n横线处应填入的数值是？"

DATE = re.compile(r"(?<![0-9])(\d{4})年(?:(\d{1,2})月)?(?:(\d{1,2})日)?")
NUMBER = re.compile(r"(?<![0-9.,])([-−]?\d+(?:,\d{3})*(?:\.\d+)?)(个百分点|%|％|倍|亿美元|万美元|美元|亿港元|港元|"
                    r"亿元|万元|千元|元|股|家|人|户|只)?")
GROWTH_CUES = ("增长", "增加", "上升", "上涨", "下降", "下滑", "减少", "下跌", "同比", "环比", "增速", "增幅", "降幅",
               "涨幅", "跌幅", "提高", "降低")
RATIO_CUES = ("市盈率", "市净率", "比率", "比例", "杠杆", "倍数", "乘数", "系数", "率为", "率是")
CURRENCY_UNITS = {"亿美元", "万美元", "美元", "亿港元", "港元", "亿元", "万元", "千元", "元"}
QUANTITY_UNITS = {"股", "家", "人", "户", "只"}
UNIT_SWAPS = {"亿元": "万元", "万元": "亿元", "千元": "万元", "元": "万元", "亿美元": "万美元", "万美元": "亿美元",
              "美元": "万美元", "亿港元": "港元", "港元": "亿港元", "%": "个百分点", "％": "个百分点",
              "个百分点": "%", "倍": "%", "股": "万股", "家": "万家", "人": "万人", "户": "万户", "只": "万只"}
DISTRACTORS = ("grid", "perturbed")  # the option constructions (see the module docstring)
SENTENCE_END = re.compile(r"(?<=[。！？；!?;\n])")


@dataclass
class Variable:
    start: int
    end: int
    kind: str  # date | percentage | growth_rate | ratio | amount | quantity
    number: str  # the digits as written (dates: the year)
    unit: str
    month: str = ""
    day: str = ""

    def render(self, number: str | None = None, unit: str | None = None, month: str | None = None) -> str:
        number = self.number if number is None else number
        if self.kind == "date":
            month = self.month if month is None else month
            return f"{number}年" + (f"{month}月" if month else "") + (f"{self.day}日" if self.day else "")
        return number + (self.unit if unit is None else unit)


def find_variables(text: str) -> list[Variable]:
    """The numeric variables of ``text`` in order (see the module docstring for what counts)."""
    found: list[Variable] = []
    taken = [False] * len(text)
    for match in DATE.finditer(text):
        found.append(Variable(match.start(), match.end(), "date", match.group(1), "年", match.group(2) or "",
                              match.group(3) or ""))
        taken[match.start():match.end()] = [True] * (match.end() - match.start())
    for match in NUMBER.finditer(text):
        if any(taken[match.start():match.end()]):
            continue
        number, unit = match.group(1).replace("−", "-"), match.group(2) or ""
        before = text[max(0, match.start() - 6):match.start()]
        if unit in {"%", "％", "个百分点"}:
            kind = "growth_rate" if unit == "个百分点" or any(c in before for c in GROWTH_CUES) else "percentage"
        elif unit == "倍" or (not unit and any(c in before for c in RATIO_CUES)):
            kind = "ratio"
        elif unit in CURRENCY_UNITS:
            kind = "amount"
        elif unit in QUANTITY_UNITS:
            kind = "quantity"
        else:
            continue  # a bare number: a code, an index, a list number
        found.append(Variable(match.start(), match.end(), kind, number, unit))
    return sorted(found, key=lambda v: v.start)


def _decimal(number: str) -> Decimal:
    return Decimal(number.replace(",", ""))


def _format(value: Decimal, like: str) -> str:
    """``value`` written like ``like``: the same thousands separators, no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if "," in like and "." not in text:
        text = f"{int(text):,}"
    return "0" if text in {"-0", ""} else text


def _swap_adjacent_digits(number: str, rng: random.Random) -> str | None:
    digits = [i for i, ch in enumerate(number) if ch.isdigit()]
    # not a leading zero: "0223" reads as a typo, not as a different value
    pairs = [(a, b) for a, b in zip(digits, digits[1:])
             if b == a + 1 and number[a] != number[b] and not (a == digits[0] and number[b] == "0")]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    chars = list(number)
    chars[a], chars[b] = chars[b], chars[a]
    return "".join(chars)


def perturbations(variable: Variable, rng: random.Random) -> list[tuple[str, str]]:
    """``(kind, rendered option)`` candidates, most typical first; duplicates are removed later."""
    out: list[tuple[str, str]] = []
    if variable.kind == "date":
        year = int(variable.number)
        out += [("year_plus_one", variable.render(str(year + 1))), ("year_minus_one", variable.render(str(year - 1)))]
        swapped = _swap_adjacent_digits(variable.number, rng)
        if swapped:
            out.append(("digit_swapped", variable.render(swapped)))
        if variable.month:
            month = int(variable.month)
            out += [("month_shifted", variable.render(month=str(month % 12 + 1))),
                    ("month_shifted", variable.render(month=str((month - 2) % 12 + 1)))]
        out += [("year_shifted", variable.render(str(year + k))) for k in (2, -2, 3)]
        return out
    try:
        value = _decimal(variable.number)
    except InvalidOperation:
        return out
    like = variable.number
    scaled = [("scaled", variable.render(_format(value * 10, like))),
              ("scaled", variable.render(_format(value / 10, like)))]
    rng.shuffle(scaled)
    typical = [scaled[0]]  # one of each kind, in a seeded order, so every kind gets its turn
    if value != 0:
        typical.append(("sign_flipped", variable.render(_format(-value, like))))
    swapped = _swap_adjacent_digits(variable.number, rng)
    if swapped:
        typical.append(("digit_swapped", variable.render(swapped)))
    if variable.unit in UNIT_SWAPS:
        typical.append(("unit_changed", variable.render(unit=UNIT_SWAPS[variable.unit])))
    rng.shuffle(typical)
    out += typical + scaled[1:]
    out += [("scaled", variable.render(_format(value * factor, like)))
            for factor in (Decimal(100), Decimal("0.01"), Decimal(2), Decimal("0.5"))]
    return out


# The grid's axes: each turns a (number, unit, month) state into another; applied in this order.
NUMBER_AXES = ("digit_swapped", "scaled", "unit_changed")
# Only swaps that go both ways: with 元 -> 万元 or 股 -> 万股 the true value would always be the shorter
# option. A sign flip is not an axis either: the text's value is nearly always the positive one.
SYMMETRIC_UNIT_SWAPS = {u: v for u, v in UNIT_SWAPS.items() if UNIT_SWAPS.get(v) == u}
DATE_AXES = ("digit_swapped", "year_shifted", "month_shifted")


def grid_axes(variable: Variable, rng: random.Random) -> dict:
    """Each usable axis of ``variable`` with its seeded parameters (a swap position, x10 or /10, +-1)."""
    axes: dict = {}
    swapped = _swap_adjacent_digits(variable.number, rng)
    if swapped:
        axes["digit_swapped"] = swapped
    if variable.kind == "date":
        axes["year_shifted"] = rng.choice((1, -1))
        if variable.month:
            axes["month_shifted"] = rng.choice((1, -1))
        return axes
    try:
        value = _decimal(variable.number)
    except InvalidOperation:
        return {}
    if value != 0:
        axes["scaled"] = rng.choice((Decimal(10), Decimal("0.1")))
    if variable.unit in SYMMETRIC_UNIT_SWAPS:
        axes["unit_changed"] = SYMMETRIC_UNIT_SWAPS[variable.unit]
    return axes


def apply_axes(variable: Variable, axes: dict, chosen: tuple[str, ...]) -> str:
    """``variable`` rendered with the ``chosen`` axes applied (in a fixed order)."""
    number, unit, month = variable.number, None, None
    if "digit_swapped" in chosen:
        number = axes["digit_swapped"]
    if variable.kind == "date":
        if "year_shifted" in chosen:
            number = str(int(number) + axes["year_shifted"])
        if "month_shifted" in chosen:
            month = str((int(variable.month) - 1 + axes["month_shifted"]) % 12 + 1)
        return variable.render(number, month=month)
    if "scaled" in chosen:
        number = _format(_decimal(number) * axes["scaled"], variable.number)
    if "unit_changed" in chosen:
        unit = axes["unit_changed"]
    return variable.render(number, unit)


def grid_options(variable: Variable, rng: random.Random) -> list[tuple[str, str]] | None:
    """``(kind, option)`` for the true value, axis a, axis b and a+b; None when no pair of axes gives 4
    distinct options."""
    axes = grid_axes(variable, rng)
    order = DATE_AXES if variable.kind == "date" else NUMBER_AXES
    names = [a for a in order if a in axes]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    rng.shuffle(pairs)
    for a, b in pairs:
        options = [("true", variable.render()), (a, apply_axes(variable, axes, (a,))),
                   (b, apply_axes(variable, axes, (b,))), (f"{a}+{b}", apply_axes(variable, axes, (a, b)))]
        if len({o for _, o in options}) == 4:
            return options
    return None


def _context(text: str, variable: Variable, max_chars: int) -> str:
    """The variable's sentence (blanked) with the sentence before it, at most ``max_chars`` characters."""
    bounds = [0] + [m.start() for m in SENTENCE_END.finditer(text) if 0 < m.start() < len(text)] + [len(text)]
    index = max(i for i, b in enumerate(bounds[:-1]) if b <= variable.start)
    start = bounds[max(0, index - 1)]
    end = next(b for b in bounds if b >= variable.end)
    blanked = text[start:variable.start] + BLANK + text[variable.end:end]
    if len(blanked) > max_chars:  # keep a window around the blank
        at = blanked.index(BLANK)
        left = max(0, min(at - max_chars // 2, len(blanked) - max_chars))
        blanked = blanked[left:left + max_chars]
    return blanked.strip()


def perturbed_options(variable: Variable, rng: random.Random, n_options: int) -> list[tuple[str, str]] | None:
    """The true value and ``n_options - 1`` distinct single perturbations of it; None when too few."""
    options = [("true", variable.render())]
    for kind, option in perturbations(variable, rng):
        if len(options) == n_options:
            break
        if option not in {o for _, o in options}:
            options.append((kind, option))
    return options if len(options) == n_options else None


def build_items(text: str, source: str, seed: int, n_options: int = 4, max_items: int = 2,
                max_context_chars: int = 200, distractors: str = "grid") -> list[Question]:
    """The NumCT items of one document (``source`` is its ``path:line``; it seeds every choice)."""
    if distractors not in DISTRACTORS:
        raise ValueError(f"distractors must be one of {', '.join(DISTRACTORS)}; got {distractors!r}")
    if distractors == "grid" and n_options != 4:
        raise ValueError("the grid construction makes exactly 4 options (use distractors='perturbed' for others)")
    rng = random.Random(f"{seed}:{source}")
    variables = find_variables(text)
    chosen = sorted(rng.sample(variables, min(max_items, len(variables))), key=lambda v: v.start)
    items = []
    for variable in chosen:
        true_value = variable.render()
        options = grid_options(variable, rng) if distractors == "grid" else perturbed_options(variable, rng, n_options)
        if options is None:
            continue  # too few distinct perturbations (rare: e.g. the value 0 with no unit to change)
        rng.shuffle(options)
        letters = LETTERS[:n_options]
        answer = letters[[kind for kind, _ in options].index("true")]
        question = Question(
            _context(text, variable, max_context_chars) + QUESTION_SUFFIX, [o for _, o in options], answer,
            SUBJECT, variable.kind, source,
            extra={"source": source, "true_value": true_value,
                   "perturbations": {letter: kind for letter, (kind, _) in zip(letters, options)}},
        )
        items.append(question)
    return items


def item_record(q: Question) -> dict:
    """The JSONL row: the question fields (for ``evaluate``) and ``prompt``/``answer`` (for ``train``)."""
    return {**question_record(q), "prompt": render_prompt(q)}


def build_from_corpus(documents: Iterable[tuple[Path, int, str]], seed: int, **options) -> Iterator[Question]:
    for path, lineno, text in documents:
        yield from build_items(text, f"{path}:{lineno}", seed, **options)


def numeric_item_splits(args) -> tuple[int, dict[str, list], dict[str, list[Question]]]:
    """``build-numeric``'s work, nothing written: from ``args.input_data`` (``BuildNumericArguments``), the
    number of documents, the document split (``train``, and ``heldout`` with a held-out share) and the items
    of each part. Every input is read and checked here, before any caller writes."""
    from finbert2.data.readers import iter_corpus_lines
    from finbert2.data.splits import split_heldout

    documents = list(iter_corpus_lines(args.input_data, args.text_field))
    train_docs, heldout_docs = split_heldout(documents, args.heldout_percentage, args.seed)
    options = {"n_options": args.n_options, "max_items": args.max_items_per_text,
               "max_context_chars": args.max_context_chars, "distractors": args.distractors}
    docs = {"train": train_docs, **({"heldout": heldout_docs} if heldout_docs else {})}
    items = {split: list(build_from_corpus(part, args.seed, **options)) for split, part in docs.items()}
    if args.max_items:
        items["train"] = items["train"][:args.max_items]
    return len(documents), docs, items


def write_numeric_items(n_documents: int, docs: dict[str, list], items: dict[str, list[Question]],
                        output_dir: Path) -> dict:
    """``numeric_item_splits``' result as ``{train,heldout}.jsonl`` (items) and, with a held-out part,
    ``{train,heldout}_text.jsonl`` (the documents: the domain module's and perplexity's split). Returns the counts."""
    from collections import Counter

    from finbert2.data.writers import write_jsonl

    output_dir.mkdir(parents=True, exist_ok=True)
    counts: dict = {"documents": n_documents}
    if "heldout" in docs:
        for split, part in docs.items():
            write_jsonl(output_dir / f"{split}_text.jsonl", [{"text": text, "source": f"{path}:{lineno}"}
                                                             for path, lineno, text in part])
    for split, questions in items.items():
        write_jsonl(output_dir / f"{split}.jsonl", [item_record(q) for q in questions])
        counts[f"{split}_documents"] = len(docs[split])
        counts[f"{split}_items"] = len(questions)
        for kind, count in sorted(Counter(q.category for q in questions).items()):
            counts[f"{split}_items_{kind}"] = count
    return counts


def run_build_numeric(args) -> dict:
    """``finbert2 numllm build-numeric``: items from ``args.input_data`` into ``args.output_dir``."""
    from finbert2.run import prepare_output_dir, setup_logging, write_metrics, write_run_config

    splits = numeric_item_splits(args)  # validated before anything is written
    output_dir = prepare_output_dir(args.output_dir, clear=True)
    setup_logging(output_dir)
    write_run_config(output_dir, args, stage="numllm-build-numeric")
    return write_metrics(output_dir, write_numeric_items(*splits, output_dir))
