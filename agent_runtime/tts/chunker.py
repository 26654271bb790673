"""Cutting streamed LLM text into speakable segments as early as is safe.

The first segment is released at the first clause boundary (",", ";", ":" or a sentence end) once it
has a few words, so speech starts before the LLM finishes its first sentence; later segments wait for
sentence ends (longer segments give better prosody and cost less per character). Text is never cut
inside a bracketed inline tag (`[laugh]`), inside a number ("3.5", "1,000"), or after a known
abbreviation ("Dr.", "e.g."). Languages without spaces (CJK) use their own punctuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ABBREVIATIONS = frozenset(
    [
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "a.m", "p.m", "u.s",
        "approx", "dept", "inc", "ltd", "co", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
        "sept", "oct", "nov", "dec", "mt", "ft",
    ]
)  # fmt: skip
# Abbreviations that are also everyday words: only abbreviations before a number ("No. 5", not "No. I").
_NUMBER_ABBREVIATIONS = frozenset({"no", "nos", "vol", "pp", "fig"})
_SENTENCE_END = ".!?。！？…"
_CLAUSE_END = ",;:、，；："
_CLOSERS = "\"')]}”’」』"
# Discourse markers and greetings that open a reply and end with a natural pause ("Sure, ...").
OPENERS = frozenset(
    [
        "sure", "yes", "yeah", "yep", "no", "nope", "okay", "ok", "alright", "all right", "right", "well",
        "so", "oh", "ah", "hmm", "hi", "hello", "hey", "thanks", "thank you", "sorry", "great", "perfect",
        "absolutely", "certainly", "of course", "got it", "i see", "indeed", "excellent", "wonderful",
        "understood", "no problem", "good", "fine", "now", "actually", "honestly", "unfortunately",
    ]
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChunkerConfig:
    first_min_words: int = 3
    """Words needed before a clause boundary may release the first segment."""
    first_min_chars: int = 12
    """Same, for text without spaces."""
    later_min_chars: int = 40
    """Later segments end only at a sentence end (or a clause end beyond `later_max_chars`)."""
    later_max_chars: int = 160
    first_opener_break: bool = False
    """Also release the first segment at a clause mark right after a short opener ("Sure,",
    "Well,", "Of course,", see `OPENERS`): an intonation break, so speech can start one phrase
    earlier without cutting a phrase in two."""


class TextChunker:
    """Incremental segmenter: `push(delta)` returns the segments that became complete."""

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self._buf = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._find_cut(final=False)
            if cut is None:
                return out
            segment, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if segment:
                out.append(segment)
                self._emitted += 1

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        if rest and _speakable(rest):
            self._emitted += 1
            return [rest]
        return []

    def _find_cut(self, final: bool) -> int | None:
        text = self._buf
        first = self._emitted == 0
        depth = 0
        for i, ch in enumerate(text):
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth = max(0, depth - 1)
            if depth or (ch not in _SENTENCE_END and ch not in _CLAUSE_END):
                continue
            end = i + 1
            # A boundary needs what follows: whitespace for spaced scripts, anything for CJK.
            # The first segment does not wait for the next token when the mark ends a word
            # ("help!", "Sure,"): no number or abbreviation ends that way (latency matters most here).
            if end >= len(text):
                if first and _eager_boundary_at(text, i):
                    head = text[:end].strip()
                    sentence_end = ch in _SENTENCE_END
                    if (sentence_end and _speakable(head)) or _long_enough_first(head, self.config):
                        return end
                return None
            while end < len(text) and text[end] in _CLOSERS:
                end += 1
            if end >= len(text):
                return None
            nxt = text[end]
            is_cjk_punct = ch in "。！？、，；：…"
            if not is_cjk_punct and not nxt.isspace():
                continue  # "3.5", "1,000", "e.g.x", "U.S.A"
            if ch == "." and _is_abbreviation(text[:i], text[end:]):
                continue
            head = text[:end].strip()
            sentence_end = ch in _SENTENCE_END
            if first:
                if (sentence_end and _speakable(head)) or _long_enough_first(head, self.config):
                    return end
            elif (sentence_end and len(head) >= self.config.later_min_chars) or (not sentence_end and len(head) >= self.config.later_max_chars):
                return end
        return None


def _eager_boundary_at(text: str, i: int) -> bool:
    ch = text[i]
    if ch not in "!?,;" and ch != ".":
        return False
    word = re.search(r"([A-Za-z']+)$", text[:i])
    if not word or len(word.group(1)) < 2:
        return False  # "3." "U.S." "A." wait for the next token
    return ch != "." or not _is_abbreviation(text[:i], "")


def _is_abbreviation(before: str, after: str) -> bool:
    """Whether the "." ending `before` belongs to an abbreviation (or an initial, "J. Smith")."""
    m = re.search(r"([A-Za-z][A-Za-z.]*)$", before)
    if not m:
        return False
    token = m.group(1).rstrip(".")
    word = token.lower()
    if word in _NUMBER_ABBREVIATIONS:
        return after.lstrip()[:1].isdigit()
    # A lone capital is an initial, except the pronoun "I" ("Neither am I. But").
    return word in _ABBREVIATIONS or (len(token) == 1 and token.isupper() and token != "I")


def _long_enough_first(head: str, cfg: ChunkerConfig) -> bool:
    words = len(head.split())
    if words >= cfg.first_min_words:
        return True
    if cfg.first_opener_break and head[-1:] in _CLAUSE_END and _is_opener(head[:-1]):
        return True
    has_spaces = " " in head
    return not has_spaces and len(head) >= cfg.first_min_chars


def _is_opener(text: str) -> bool:
    """Whether `text` (tags removed) is one of the `OPENERS`, whatever its case and spacing."""
    words = re.sub(r"\[[^\]]*\]", " ", text).lower().split()
    return 0 < len(words) <= 2 and " ".join(words) in OPENERS


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in re.sub(r"\[[^\]]*\]", "", text))
