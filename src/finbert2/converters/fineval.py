"""FinEval academic multiple-choice questions (CSV per subject) to the numllm question format.

    finbert2 convert fineval --input_dir ../shared/data/fineval-academic --output_dir data/fineval

Reads ``<input_dir>/data/{dev,val,test_20%}/<subject>_{dev,val,test_selected}.csv`` (columns ``id,question,A,B,C,D,
answer``) and ``subject_mapping.json`` (file name -> [name, Chinese name, category]) and writes
``dev.jsonl``, ``val.jsonl`` and ``test.jsonl``, one ``{"question", "options": [A, B, C, D],
"answer", "subject" (Chinese), "category", "id"}`` per row. FinEval writes ``%`` as ``$\\%$``
(LaTeX); it is kept as written. Rows without a question are skipped and counted. Prints the counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from finbert2.converters._question_converter import question_converter_main
from finbert2.data import iter_csv, write_jsonl
from finbert2.errors import DataError

# folder -> (our split name, file name suffix)
SPLITS = {"dev": ("dev", "_dev.csv"), "val": ("val", "_val.csv"), "test_20%": ("test", "_test_selected.csv")}
COLUMNS = ["id", "question", "A", "B", "C", "D", "answer"]


def data_root(input_dir: Path) -> Path:
    return input_dir / "data" if (input_dir / "data" / "subject_mapping.json").is_file() else input_dir


def read_subject_mapping(root: Path) -> dict[str, tuple[str, str]]:
    path = root / "subject_mapping.json"
    if not path.is_file():
        raise DataError(path, None, "missing FinEval subject_mapping.json (expected <input_dir>/data/...)")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DataError(path, None, f"not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(mapping, dict):
        raise DataError(path, None, "expected an object of subject -> [name, Chinese name, category]")
    out = {}
    for key, value in mapping.items():
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) and v.strip() for v in value)):
            raise DataError(path, None, f"subject '{key}': expected [name, Chinese name, category]")
        out[key] = (value[1].strip(), value[2].strip())
    return out


def convert_split(folder: Path, split: str, suffix: str,
                  subjects: dict[str, tuple[str, str]]) -> tuple[list[dict], int]:
    rows, skipped = [], 0
    files = sorted(folder.glob(f"*{suffix}"))
    if not files:
        raise DataError(folder, None, f"no *{suffix} files")
    for path in files:
        key = path.name[:-len(suffix)]
        if key not in subjects:
            raise DataError(path, None, f"subject '{key}' is not in subject_mapping.json")
        subject, category = subjects[key]
        for lineno, row in iter_csv(path):
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise DataError(path, 1, f"missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
            question = row["question"].strip()
            if not question:
                skipped += 1
                continue
            options = [row[letter].strip() for letter in "ABCD"]
            answer = row["answer"].strip().upper()
            if answer not in {"A", "B", "C", "D"}:
                raise DataError(path, lineno, f"answer '{row['answer']}': expected A, B, C or D")
            if not all(options):
                raise DataError(path, lineno, "an empty option")
            rows.append({"question": question, "options": options, "answer": answer, "subject": subject,
                         "category": category, "id": f"{key}-{split}-{row['id'].strip()}"})
    return rows, skipped


def convert(input_dir: Path, output_dir: Path) -> dict[str, int]:
    root = data_root(input_dir)
    subjects = read_subject_mapping(root)
    converted = {}
    for folder, (split, suffix) in SPLITS.items():
        if not (root / folder).is_dir():
            raise DataError(root / folder, None, "missing FinEval split folder")
        converted[split] = convert_split(root / folder, split, suffix, subjects)
    counts = {}
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, (rows, skipped) in converted.items():
        write_jsonl(output_dir / f"{split}.jsonl", rows)
        counts[split] = len(rows)
        counts[f"{split}_skipped_without_question"] = skipped
    counts["subjects"] = len({r["subject"] for rows, _ in converted.values() for r in rows})
    return counts


def main(argv: list[str] | None = None) -> int:
    return question_converter_main("finbert2 convert fineval", __doc__, "the fineval-academic folder (holding data/)", convert, argv)


if __name__ == "__main__":
    sys.exit(main())
