"""JSON parsing with a nesting limit, checked without recursion (a deep document cannot blow the stack)."""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON string (possibly unterminated: it then runs to the end) or one bracket.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


class JSONTooDeep(ValueError):
    """The document nests arrays/objects deeper than allowed."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"too deeply nested (more than {max_depth} levels of arrays/objects)")
        self.max_depth = max_depth


def exceeds_depth(text: str, max_depth: int) -> bool:
    """Whether `text` opens more than `max_depth` nested arrays/objects (brackets inside strings don't count)."""
    if text.count("[") + text.count("{") <= max_depth:
        return False  # the common case, at C speed
    depth = 0
    for match in _TOKENS.finditer(text):
        c = match.group()[0]
        if c in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif c in "]}":
            depth = max(0, depth - 1)
    return False


def loads(raw: str | bytes, max_depth: int) -> Any:
    """`json.loads` that raises JSONTooDeep (a ValueError) for nesting over `max_depth`.

    Bytes are decoded like `json.loads` does (UTF-8/16/32); a bad encoding raises UnicodeDecodeError.
    """
    text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes | bytearray) else raw
    if exceeds_depth(text, max_depth):
        raise JSONTooDeep(max_depth)
    try:
        return json.loads(text)
    except RecursionError:  # only when max_depth is set above what the interpreter can recurse
        raise JSONTooDeep(max_depth) from None
