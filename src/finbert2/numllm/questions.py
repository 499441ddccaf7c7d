"""Multiple-choice questions: the one format, the prompt both training and evaluation use, the numeric rule.

A question is one JSONL object ``{"question": str, "options": [str, ...], "answer": "B", "subject": str}``
(optional ``category``, ``id``, ``source``). ``answer`` is the letter of the right option (several
letters for a multiple-answer question, which option scoring cannot judge and skips). The FinEval
and CFLUE converters (``finbert2 convert fineval|cflue``) and ``finbert2 numllm build-numeric``
write this format; every prompt is rendered by ``render_prompt`` so the numeric items a LoRA
module is tuned on look exactly like the questions it is evaluated on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finbert2.data.readers import get_text, get_text_list, iter_jsonl
from finbert2.errors import DataError

LETTERS = "ABCDEFGHIJ"
ANSWER_CUE = "答案："
GENERIC_SUBJECT = "金融"


@dataclass
class Question:
    question: str
    options: list[str]
    answer: str  # one letter, or several for a multiple-answer question
    subject: str
    category: str = ""
    source: str = ""  # path:line it was read from (or built from)
    extra: dict = field(default_factory=dict)

    @property
    def single_answer(self) -> bool:
        return len(self.answer) == 1

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)


def question_from_record(obj: dict, path: Path, lineno: int) -> Question:
    """Validate one ``{"question","options","answer","subject"}`` record (errors name ``path:line``)."""
    text = get_text(obj, "question", path, lineno)
    options = get_text_list(obj, "options", path, lineno)
    if not 2 <= len(options) <= len(LETTERS):
        raise DataError(path, lineno, f"field 'options' has {len(options)} entries, expected 2 to {len(LETTERS)}")
    answer = get_text(obj, "answer", path, lineno).strip().upper()
    allowed = LETTERS[:len(options)]
    if any(letter not in allowed for letter in answer) or len(set(answer)) != len(answer):
        raise DataError(path, lineno, f"field 'answer' is '{obj['answer']}', expected letters from {allowed}")
    subject = get_text(obj, "subject", path, lineno)
    category = get_text(obj, "category", path, lineno, required=False) or ""
    return Question(text.strip(), [o.strip() for o in options], "".join(sorted(answer)), subject.strip(),
                    category.strip(), f"{path}:{lineno}")


def iter_questions(paths: str | Path | Sequence[str | Path]) -> Iterator[Question]:
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        for lineno, obj in iter_jsonl(path):
            yield question_from_record(obj, Path(path), lineno)


def read_questions(paths: str | Path | Sequence[str | Path]) -> list[Question]:
    """Every question of the files, validated before any is used."""
    return list(iter_questions(paths))


def question_record(q: Question) -> dict:
    record = {"question": q.question, "options": q.options, "answer": q.answer, "subject": q.subject}
    if q.category:
        record["category"] = q.category
    return {**record, **q.extra}


def render_question(q: Question, with_answer: bool) -> str:
    lines = [q.question, *(f"{LETTERS[i]}. {option}" for i, option in enumerate(q.options))]
    return "\n".join(lines) + "\n" + ANSWER_CUE + (q.answer + "\n\n" if with_answer else "")


def render_prompt(q: Question, shots: Sequence[Question] = ()) -> str:
    """FinEval's answer-only prompt: a header naming the subject, the worked shots, the question, ``答案：``."""
    kind = "单项选择题" if q.single_answer else "多项选择题"
    header = f"以下是中国关于{q.subject or GENERIC_SUBJECT}考试的{kind}，请选出其中的正确答案。\n\n"
    return header + "".join(render_question(s, with_answer=True) for s in shots) + render_question(q, False)


# --------------------------------------------------------------------------- numeric vs non-numeric

# The rule that splits evaluation questions (NumLLM reports FinEval "numeric" and "non-numeric"
# questions but does not publish its split): a question is numeric when its text or any option has
# a digit (ASCII or full-width), a percentage sign or word, or an arithmetic cue word/operator.
DIGIT = re.compile(r"[0-9０-９]")
PERCENT = re.compile(r"[%％‰]|百分之|百分点")
ARITHMETIC_CUES = ("计算", "多少", "等于", "金额为", "余额为", "合计为", "约为", "增长率为", "收益率为", "利率为")
ARITHMETIC_OPERATORS = re.compile(r"[=＝+＋÷×]")


def numeric_reason(texts: Sequence[str]) -> str | None:
    """Why the texts make a numeric question (``digit``, ``percent``, ``cue:<word>``), or None."""
    joined = "\n".join(texts)
    if DIGIT.search(joined):
        return "digit"
    if PERCENT.search(joined):
        return "percent"
    for cue in ARITHMETIC_CUES:
        if cue in joined:
            return f"cue:{cue}"
    if ARITHMETIC_OPERATORS.search(joined):
        return "operator"
    return None


def is_numeric(q: Question) -> bool:
    return numeric_reason([q.question, *q.options]) is not None
