"""CFBenchmark-Basic event tags to classification JSONL {text, label}: level-1 event type (公司|金融市场|宏观|行业).

    finbert2 convert cfbenchmark-event ../shared/data/cfbenchmark-basic/data/event.jsonl data/cfb_event

The response is a comma-separated tag path ("公司, 公司经营活动, 公司销售"); ``--level 1`` (default)
keeps its first element, a 4-class task. The instruction is dropped: it names the level-1 class.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from finbert2.converters.cfbenchmark_sentiment import build_parser, convert_rows, write_output
from finbert2.errors import ConfigError, FinBERT2Error

EVENT_LEVEL1_LABELS = ("公司", "金融市场", "宏观", "行业")
_SEPARATOR = re.compile(r"\s*[,，]\s*")


def event_label(response: str, level: int = 1) -> str:
    parts = [p for p in _SEPARATOR.split(response.strip()) if p]
    return ", ".join(parts[:level])


def convert_event(path: str | Path, level: int = 1) -> list[dict]:
    if level < 1:
        raise ConfigError("--level must be at least 1")
    return convert_rows(path, lambda response: event_label(response, level),
                        EVENT_LEVEL1_LABELS if level == 1 else None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("finbert2 convert cfbenchmark-event", __doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=1, help="tag-path depth kept as the label (1: 4 classes)")
    args = parser.parse_args(argv)
    try:
        write_output(convert_event(args.input, args.level), args)
    except FinBERT2Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
