"""CFLUE knowledge-assessment exam questions (one JSON list) to the numllm question format.

    finbert2 convert cflue --input_dir ../shared/data/cflue --output_dir data/cflue

Reads ``<input_dir>/data/knowledge.json`` (or ``data/knowledge/knowledge.json``): a list of
``{"名称": exam, "task": 单项选择题 | 多项选择题 | 判断题, "question", "choices": "{'A': '...', ...}"
(a Python-dict literal, read with ``ast.literal_eval``), "answer": "D" or "ABD", "analysis"}``.
Writes ``single.jsonl``, ``multiple.jsonl`` and ``true_false.jsonl``: ``{"question", "options",
"answer", "subject": exam, "category": task, "id"}``, the options in letter order. A bad entry is
reported as ``path: entry N: reason`` (the file is one JSON document, so it has no line per entry).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from finbert2.converters._question_converter import question_converter_main
from finbert2.data import write_jsonl
from finbert2.errors import DataError

TASK_FILES = {"单项选择题": "single", "多项选择题": "multiple", "判断题": "true_false"}
MAX_CHOICES_CHARS = 20_000  # a choices literal longer than this is not an exam question's options


def knowledge_file(input_dir: Path) -> Path:
    for candidate in (input_dir / "data" / "knowledge.json", input_dir / "data" / "knowledge" / "knowledge.json",
                      input_dir / "knowledge.json"):
        if candidate.is_file():
            return candidate
    raise DataError(input_dir / "data" / "knowledge.json", None, "missing CFLUE knowledge.json")


def _string(entry: dict, name: str, path: Path, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, None, f"{where}: field '{name}' must be a non-empty string")
    return value.strip()


def parse_choices(text: str, path: Path, where: str) -> list[str]:
    """``"{'A': '...', 'B': '...'}"`` -> the options in letter order (A, B, ... with no gap)."""
    if len(text) > MAX_CHOICES_CHARS:
        raise DataError(path, None, f"{where}: 'choices' is longer than {MAX_CHOICES_CHARS} characters")
    try:
        choices = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise DataError(path, None, f"{where}: 'choices' is not a dict literal") from None
    if not isinstance(choices, dict) or not choices:
        raise DataError(path, None, f"{where}: 'choices' must be a non-empty dict of letter -> option")
    letters = sorted(str(k).strip().upper() for k in choices)
    if letters != [chr(ord("A") + i) for i in range(len(letters))] or len(letters) > 10:
        raise DataError(path, None, f"{where}: 'choices' letters {letters} are not A, B, C, ... in sequence")
    by_letter = {str(k).strip().upper(): v for k, v in choices.items()}
    options = []
    for letter in letters:
        value = by_letter[letter]
        if not isinstance(value, (str, int, float)) or not str(value).strip():
            raise DataError(path, None, f"{where}: option {letter} is empty or not text")
        options.append(str(value).strip())
    return options


def convert(input_dir: Path, output_dir: Path) -> dict[str, int]:
    path = knowledge_file(input_dir)
    try:
        entries = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(path, None, f"invalid UTF-8 at byte {err.start}") from None
    except (ValueError, RecursionError) as err:
        raise DataError(path, None, f"not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(path, None, "expected a non-empty JSON list of questions")
    out: dict[str, list[dict]] = {name: [] for name in TASK_FILES.values()}
    for index, entry in enumerate(entries):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            raise DataError(path, None, f"{where}: expected an object, got {type(entry).__name__}")
        task = _string(entry, "task", path, where)
        if task not in TASK_FILES:
            raise DataError(path, None, f"{where}: task '{task}': expected one of {', '.join(TASK_FILES)}")
        options = parse_choices(_string(entry, "choices", path, where), path, where)
        answer = "".join(sorted(_string(entry, "answer", path, where).upper().replace(",", "").replace(" ", "")))
        if not answer or any(ch not in "ABCDEFGHIJ"[:len(options)] for ch in answer) or len(set(answer)) != len(answer):
            raise DataError(path, None, f"{where}: answer '{entry['answer']}' does not name its options")
        if task != "多项选择题" and len(answer) != 1:
            raise DataError(path, None, f"{where}: a {task} has one answer, got '{answer}'")
        out[TASK_FILES[task]].append({
            "question": _string(entry, "question", path, where), "options": options, "answer": answer,
            "subject": _string(entry, "名称", path, where), "category": task, "id": f"cflue-{index}",
        })
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in out.items():
        write_jsonl(output_dir / f"{name}.jsonl", rows)
    return {name: len(rows) for name, rows in out.items()}


def main(argv: list[str] | None = None) -> int:
    return question_converter_main("finbert2 convert cflue", __doc__, "the cflue folder (holding data/knowledge.json)", convert, argv)


if __name__ == "__main__":
    sys.exit(main())
