"""CFBenchmark-Basic event tags to classification JSONL {text, label}: level-1 event type (公司|金融市场|宏观|行业).

    finbert2 convert cfbenchmark-event $FINBERT2_PUBLIC_DATA/cfbenchmark-basic/data/event.jsonl data/cfb_event

The response is a comma-separated tag path ("公司, 公司经营活动, 公司销售"); ``--level 1`` (default)
keeps its first element, a 4-class task. The instruction is dropped: it names the level-1 class.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from finbert2.converters.cfbenchmark_sentiment import convert_rows, run_converter
from finbert2.errors import ConfigError

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
    def add_level(parser):
        parser.add_argument("--level", type=int, default=1, help="tag-path depth kept as the label (1: 4 classes)")

    return run_converter(argv, "finbert2 convert cfbenchmark-event", __doc__.splitlines()[0],
                         lambda args: convert_event(args.input, args.level), add_level)

if __name__ == "__main__":
    sys.exit(main())
