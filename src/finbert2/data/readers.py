"""Readers and validators for every data format of the toolkit (DESIGN.md section 4).

Every reader checks the whole file before returning, so a run stops before any work on the first
bad row, with ``path:line: what is wrong``. Lines are read as bytes and decoded one at a time, so
invalid UTF-8 is reported at its line and a corpus is never held twice in memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finbert2.errors import DataError

JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
CSV_SUFFIXES = {".csv", ".tsv"}
TEXT_SUFFIXES = {".txt", ".text"}

# A single JSON line nested deeper than this is hostile or broken, not data (json would recurse).
MAX_JSON_DEPTH = 64


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, None, "no such file")
    if path.is_dir():
        raise DataError(path, None, "is a folder, expected a file")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, lineno, f"invalid UTF-8 at byte {err.start} of the line") from None
    if lineno == 1 and text.startswith("\ufeff"):  # tolerate a BOM written by Excel/Notepad
        text = text[1:]
    return text


def iter_raw_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line, blank ones included, without its line ending."""
    path = Path(path)
    _check_file(path)
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            # Only \n ends a line: str.splitlines would also split on U+2028 and friends inside text.
            yield lineno, _decode(raw, path, lineno).rstrip("\r\n")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line; an empty file is an error."""
    seen_any = False
    for lineno, text in iter_raw_lines(path):
        if not text.strip():
            continue
        seen_any = True
        yield lineno, text
    if not seen_any:
        raise DataError(path, None, "file is empty")


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Cheap bracket count (ignoring strings) so json.loads never recurses into hostile nesting."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for a JSONL file, one JSON object per line."""
    path = Path(path)
    for lineno, text in iter_lines(path):
        if ("[" in text or "{" in text) and text.count("[") + text.count("{") > MAX_JSON_DEPTH:
            if _json_depth_exceeds(text, MAX_JSON_DEPTH):
                raise DataError(path, lineno, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(path, lineno, f"invalid JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise DataError(path, lineno, "JSON nested too deeply") from None
        except ValueError as err:  # e.g. an integer literal beyond Python's 4300-digit limit
            raise DataError(path, lineno, f"invalid JSON ({err})") from None
        if not isinstance(obj, dict):
            raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def iter_csv(path: str | Path, delimiter: str | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for a CSV/TSV file with a header row."""
    path = Path(path)
    _check_file(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = raw[: err.start].count(b"\n") + 1
        raise DataError(path, lineno, "invalid UTF-8") from None
    if not text.strip():
        raise DataError(path, None, "file is empty")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    if "\x00" in text:
        lineno = text[: text.index("\x00")].count("\n") + 1
        raise DataError(path, lineno, "NUL byte in CSV")
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as err:
        raise DataError(path, 1, f"malformed CSV header ({err})") from None
    header = [name.strip() for name in header]
    if not any(header):
        raise DataError(path, 1, "header row is empty")
    data_rows = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(path, reader.line_num, f"malformed CSV ({err})") from None
        if not values or not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(
                path, reader.line_num, f"expected {len(header)} columns ({','.join(header)}), got {len(values)}"
            )
        data_rows += 1
        yield reader.line_num, dict(zip(header, values))
    if data_rows == 0:
        raise DataError(path, None, "file has a header but no rows")


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield records from a JSONL or CSV file, chosen by suffix (unknown suffixes are read as JSONL)."""
    path = Path(path)
    if path.suffix.lower() in CSV_SUFFIXES:
        return iter_csv(path)
    return iter_jsonl(path)


# ---------------------------------------------------------------------------------------------
# field checks


def get_text(obj: dict[str, Any], name: str, path: Path, lineno: int, *, required: bool = True) -> str | None:
    """A non-empty string field."""
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(path, lineno, f"missing field '{name}'")
        return None
    value = obj[name]
    if not isinstance(value, str):
        raise DataError(path, lineno, f"field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, lineno, f"field '{name}' is empty")
    return value


def get_text_list(obj: dict[str, Any], name: str, path: Path, lineno: int, *, required: bool = True,
                  allow_empty: bool = False) -> list[str]:
    """A list of non-empty strings."""
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(path, lineno, f"missing field '{name}'")
        return []
    value = obj[name]
    if not isinstance(value, list):
        raise DataError(path, lineno, f"field '{name}' must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise DataError(path, lineno, f"field '{name}' is an empty list")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(path, lineno, f"field '{name}[{index}]' must be a string, got {type(item).__name__}")
        if not item.strip():
            raise DataError(path, lineno, f"field '{name}[{index}]' is empty")
    return value


def _as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("<none>", None, "no input file given")
    return paths


# ---------------------------------------------------------------------------------------------
# pretraining corpus


def iter_corpus_lines(paths: str | Path | Sequence[str | Path],
                      text_field: str = "text") -> Iterator[tuple[Path, int, str]]:
    """Stream ``(path, line number, document)`` from ``.txt`` (one per line) or JSONL/CSV files."""
    for path in _as_paths(paths):
        if path.suffix.lower() in TEXT_SUFFIXES:
            for lineno, line in iter_lines(path):
                yield path, lineno, line.strip()
        else:
            for lineno, obj in iter_records(path):
                yield path, lineno, get_text(obj, text_field, path, lineno)


def iter_corpus(paths: str | Path | Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Stream documents from ``.txt`` (one per line) or JSONL/CSV files (``text_field``)."""
    for _, _, text in iter_corpus_lines(paths, text_field):
        yield text


def read_corpus(paths: str | Path | Sequence[str | Path], text_field: str = "text") -> list[str]:
    """All documents of a pretraining corpus, validated."""
    return list(iter_corpus(paths, text_field))


# ---------------------------------------------------------------------------------------------
# classification


@dataclass
class ClassificationData:
    texts: list[str]
    labels: list[Any]  # str, or list[str] when multi_label
    multi_label: bool
    path: str = ""

    def label_names(self) -> list[str]:
        names: set[str] = set()
        for label in self.labels:
            names.update(label if self.multi_label else [label])
        return sorted(names)


def _normalise_label(value: Any, path: Path, lineno: int, name: str) -> str:
    # Integer labels are kept as their decimal string so "1" in a CSV and 1 in JSONL agree.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, lineno, f"field '{name}' must be a string or integer, got {type(value).__name__}")
    label = str(value).strip()
    if not label:
        raise DataError(path, lineno, f"field '{name}' is empty")
    return label


def read_classification(
    paths: str | Path | Sequence[str | Path],
    text_field: str = "text",
    label_field: str = "label",
    label_set: Iterable[str] | None = None,
    multi_label: bool | None = None,
    require_labels: bool = True,
) -> ClassificationData:
    """Read ``{"text", "label"}`` rows (JSONL or CSV). ``label_set`` rejects labels outside it.

    Multi-label rows carry a list of labels; ``multi_label=None`` infers it from the first row and
    then requires every row to agree.
    """
    allowed = {str(x) for x in label_set} if label_set is not None else None
    texts: list[str] = []
    labels: list[Any] = []
    for path in _as_paths(paths):
        for lineno, obj in iter_records(path):
            texts.append(get_text(obj, text_field, path, lineno))
            if not require_labels:
                continue
            if label_field not in obj or obj[label_field] is None:
                raise DataError(path, lineno, f"missing field '{label_field}'")
            raw = obj[label_field]
            if isinstance(raw, str) and path.suffix.lower() in CSV_SUFFIXES and raw.startswith("["):
                try:  # a multi-label CSV cell written as a JSON list
                    raw = json.loads(raw)
                except (ValueError, RecursionError):
                    pass  # not a JSON list: an ordinary label that starts with "["
            row_is_multi = isinstance(raw, list)
            if multi_label is None:
                multi_label = row_is_multi
            elif row_is_multi != multi_label:
                kind = "a list of labels" if multi_label else "a single label"
                raise DataError(path, lineno, f"field '{label_field}' must be {kind}, as in earlier rows")
            if row_is_multi:
                value = [_normalise_label(v, path, lineno, label_field) for v in raw]
            else:
                value = _normalise_label(raw, path, lineno, label_field)
            if allowed is not None:
                for label in value if row_is_multi else [value]:
                    if label not in allowed:
                        raise DataError(
                            path, lineno, f"label '{label}' is not in the declared label set {sorted(allowed)}"
                        )
            labels.append(value)
    return ClassificationData(texts=texts, labels=labels, multi_label=bool(multi_label),
                              path=",".join(str(p) for p in _as_paths(paths)))


# ---------------------------------------------------------------------------------------------
# retrieval


def read_retrieval_train(
    paths: str | Path | Sequence[str | Path], require_neg: bool = True
) -> list[dict[str, Any]]:
    """Read FlagEmbedding training rows ``{"query": str, "pos": [str], "neg": [str]}``."""
    rows: list[dict[str, Any]] = []
    for path in _as_paths(paths):
        for lineno, obj in iter_jsonl(path):
            row = {
                "query": get_text(obj, "query", path, lineno),
                "pos": get_text_list(obj, "pos", path, lineno),
                "neg": get_text_list(obj, "neg", path, lineno, required=require_neg, allow_empty=not require_neg),
            }
            # Scores from distillation data are passed through untouched when present.
            for extra in ("pos_scores", "neg_scores", "prompt", "type"):
                if extra in obj:
                    row[extra] = obj[extra]
            rows.append(row)
    return rows


def _get_id(obj: dict[str, Any], name: str, path: Path, lineno: int) -> str:
    if name not in obj or obj[name] is None:
        raise DataError(path, lineno, f"missing field '{name}'")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, lineno, f"field '{name}' must be a string or integer id, got {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise DataError(path, lineno, f"field '{name}' is empty")
    return value


@dataclass
class RetrievalEvalData:
    """A FlagEmbedding-style custom evaluation folder."""

    corpus: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> {"title", "text"}
    queries: dict[str, str] = field(default_factory=dict)  # id -> text
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)  # qid -> {docid: relevance}
    query_sources: dict[str, str] = field(default_factory=dict)  # qid -> optional "source" (per-source tables)


def read_retrieval_eval(folder: str | Path, split: str = "test") -> RetrievalEvalData:
    """Read ``corpus.jsonl``, ``{split}_queries.jsonl`` and ``{split}_qrels.jsonl`` and cross-check ids."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(folder, None, "no such folder")
    if not folder.is_dir():
        raise DataError(folder, None, "expected a folder with corpus.jsonl, queries and qrels")
    data = RetrievalEvalData()

    corpus_path = folder / "corpus.jsonl"
    for lineno, obj in iter_jsonl(corpus_path):
        doc_id = _get_id(obj, "id", corpus_path, lineno)
        if doc_id in data.corpus:
            raise DataError(corpus_path, lineno, f"duplicate id '{doc_id}'")
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise DataError(corpus_path, lineno, f"field 'title' must be a string, got {type(title).__name__}")
        data.corpus[doc_id] = {"title": title, "text": get_text(obj, "text", corpus_path, lineno)}

    queries_path = folder / f"{split}_queries.jsonl"
    for lineno, obj in iter_jsonl(queries_path):
        query_id = _get_id(obj, "id", queries_path, lineno)
        if query_id in data.queries:
            raise DataError(queries_path, lineno, f"duplicate id '{query_id}'")
        data.queries[query_id] = get_text(obj, "text", queries_path, lineno)
        source = obj.get("source")
        if source is not None:
            if not isinstance(source, str) or not source:
                raise DataError(queries_path, lineno, f"field 'source' must be a non-empty string, got {source!r}")
            data.query_sources[query_id] = source

    qrels_path = folder / f"{split}_qrels.jsonl"
    for lineno, obj in iter_jsonl(qrels_path):
        query_id = _get_id(obj, "qid", qrels_path, lineno)
        doc_id = _get_id(obj, "docid", qrels_path, lineno)
        relevance = obj.get("relevance", 1)
        if isinstance(relevance, bool) or not isinstance(relevance, int):
            raise DataError(qrels_path, lineno, f"field 'relevance' must be an integer, got {relevance!r}")
        if query_id not in data.queries:
            raise DataError(qrels_path, lineno, f"qid '{query_id}' is not in {queries_path.name}")
        if doc_id not in data.corpus:
            raise DataError(qrels_path, lineno, f"docid '{doc_id}' is not in {corpus_path.name}")
        data.qrels.setdefault(query_id, {})[doc_id] = relevance
    unjudged = [q for q in data.queries if q not in data.qrels]
    if len(unjudged) == len(data.queries):
        raise DataError(qrels_path, None, "no query has a relevance judgement")
    return data


# ---------------------------------------------------------------------------------------------
# topic modeling


@dataclass
class TopicDocs:
    texts: list[str]
    dates: list[str | None]


def read_topic_docs(
    paths: str | Path | Sequence[str | Path], text_field: str = "text", date_field: str = "date"
) -> TopicDocs:
    """Read titles for topic modeling: JSONL ``{"text", "date"?}`` or CSV with a title column.

    For CSV, ``text_field`` names the column; ``title``/``Text``/``text`` are tried when the named
    one is absent, as upstream's title CSV and the headline sets name it differently.
    """
    texts: list[str] = []
    dates: list[str | None] = []
    for path in _as_paths(paths):
        if path.suffix.lower() in TEXT_SUFFIXES:
            for _, line in iter_lines(path):
                texts.append(line.strip())
                dates.append(None)
            continue
        column = text_field
        for lineno, obj in iter_records(path):
            if column not in obj and path.suffix.lower() in CSV_SUFFIXES:
                column = next((c for c in (text_field, "title", "Title", "text", "Text") if c in obj), text_field)
            texts.append(get_text(obj, column, path, lineno))
            date = obj.get(date_field)
            if date is not None and not isinstance(date, str):
                raise DataError(path, lineno, f"field '{date_field}' must be a string, got {type(date).__name__}")
            dates.append(date.strip() if date and date.strip() else None)
    return TopicDocs(texts=texts, dates=dates)
