"""Hypothesis strategies for hostile input, shared by the reader and converter property tests."""

from __future__ import annotations

import json
import re
import string

from hypothesis import strategies as st

# what an error message looks like: ``path: reason`` or ``path:line: reason``
ERROR_FORMAT = re.compile(r"^.+?(:\d+)?: .+$", re.S)

# Text that mixes the characters scraped financial text actually carries.
FINANCIAL_CHARS = "净利润融资融券同比增长亿元ＡＢＣ１２３％，。：“”（）ａｂｃ\u3000\u00a0\u200b\ufeff\u2028"
hostile_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(FINANCIAL_CHARS),
        st.characters(min_codepoint=0, max_codepoint=0x1F),  # control characters
        st.characters(codec="utf-8"),
        st.sampled_from(string.whitespace),
    ),
    max_size=60,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | hostile_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4),
    max_leaves=12,
)
record = st.dictionaries(
    st.sampled_from(["text", "label", "query", "pos", "neg", "id", "title", "date", "qid", "docid", "relevance"]),
    json_values,
    max_size=6,
)


def _encode_line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


jsonl_bytes = st.one_of(
    st.binary(max_size=400),  # random bytes, invalid UTF-8 included
    st.lists(record, max_size=5).map(lambda rows: b"\n".join(_encode_line(r) for r in rows)),
    st.lists(st.one_of(record.map(_encode_line), st.binary(max_size=40)), max_size=5).map(b"\n".join),
)
csv_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.lists(hostile_text, min_size=1, max_size=4), max_size=5).map(
        lambda rows: ("text,label\n" + "\n".join(",".join(r) for r in rows)).encode("utf-8", "surrogatepass")
    ),
)

