"""Cutting streamed LLM text into speakable segments as early as is safe.

The first segment is released at the first clause boundary (",", ";", ":" or a sentence end) once it
has a few words, or right after a short opener ("Yes,", "Sure,": `first_opener_break`), so speech starts before the LLM finishes its first sentence; later segments wait for
sentence ends (longer segments give better prosody and cost less per character). Text is never cut
inside a bracketed inline tag (`[laugh]`), inside a number ("3.5", "1,000"), or after a known
abbreviation ("Dr.", "e.g."). Languages without spaces (CJK) use their own punctuation.

No segment is longer than `max_chars` (`cap_cut`): text that runs past it without a usable mark is
cut at the last clause mark in its second half, else at the last space, never inside an inline tag;
text without spaces (CJK, one giant "word") is cut at the cap itself. Engines therefore never get
unbounded input (their memory grows with the segment length), and the chunker's own buffer, hence
its per-delta work, stays bounded too.
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
# Marks the size cap prefers to cut after ("." is left out: it may end an abbreviation or a number).
_CAP_MARKS = ",;:!?…、，；：。！？"
_CJK_MARKS = "。！？、，；：…"
INLINE_TAG = re.compile(r"\[[^\[\]]*\]")
"""A complete inline tag (`[laugh]`, `[excited tone]`)."""
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
    first_opener_break: bool = True
    """Also release the first segment at a clause mark right after a short opener ("Sure,",
    "Well,", "Of course,", see `OPENERS`): an intonation break, so speech can start one phrase
    earlier without cutting a phrase in two. It pays for engines whose first audio grows with the
    segment (piper, whose text encoder sees a whole sentence first: the opener's first audio comes
    45-65 ms before the whole first sentence's with chunked decoding, 300-700 ms before it without,
    and the rest is ready before the opener has played; `python -m agent_runtime.bench.opener`); an
    engine whose first audio does not grow with the segment may set it false."""
    max_chars: int = 250
    """Hard cap on a segment's length: longer text is cut even without punctuation (see `cap_cut`)."""

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")


class TextChunker:
    """Incremental segmenter: `push(delta)` returns the segments that became complete.

    Every segment is at most `config.max_chars` long, and so is the text kept between pushes."""

    tag_pattern: re.Pattern[str] = INLINE_TAG
    """Complete tags the size cap never cuts inside."""
    tag_openers: tuple[str, ...] = ("[",)
    """How a tag starts: after the last unmatched opener, a tag is still being written."""

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self._buf = ""
        self._emitted = 0

    @property
    def max_chars(self) -> int:
        return self.config.max_chars

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while True:
            cuts = [c for c in (self._find_cut(final=False), self._cap_cut()) if c is not None]
            if not cuts:
                return out
            self._take(min(cuts), out)

    def flush(self) -> list[str]:
        out: list[str] = []
        while (cut := self._cap_cut()) is not None:
            self._take(cut, out)
        rest, self._buf = self._buf.strip(), ""
        if rest and _speakable(rest):
            self._emitted += 1
            out.append(rest)
        return out

    def _take(self, cut: int, out: list[str]) -> None:
        segment, self._buf = self._buf[:cut].strip(), self._buf[cut:]
        if segment:
            out.append(segment)
            self._emitted += 1

    def _cap_cut(self) -> int | None:
        """Where the size cap cuts the buffer (None while it fits)."""
        return cap_cut(self._buf, self.config.max_chars, self.tag_pattern, self.tag_openers)

    def _find_cut(self, final: bool) -> int | None:
        """The punctuation rules' cut (the size cap is applied on top by `push`)."""
        text = self._buf
        first = self._emitted == 0
        depth = 0
        limit = self.config.max_chars
        for i, ch in enumerate(text):
            if i >= limit:
                break  # a cut past the cap never wins over the cap's own (bounds the work per push)
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


def cap_cut(
    text: str, limit: int, tags: re.Pattern[str] = INLINE_TAG, openers: tuple[str, ...] = ("[",)
) -> int | None:
    """Where to cut `text` so that its head is at most `limit` characters; None if it fits.

    In order of preference: right after the last clause mark (",;:!?" and CJK marks, not ".")
    in the second half of the window, then at the last space, then (no space at all: CJK, one
    giant word) at the last character boundary with speakable text before it; none of them inside
    a tag (`tags`, or one still open after an `openers` string). A tag longer than `limit` cannot
    stay whole and is cut like text; failing everything the cut is at `limit`, so the result is
    always in [1, limit] for text longer than `limit`.
    """
    if len(text) <= limit:
        return None
    window = text[: 2 * limit + 1]  # holds every tag (of at most `limit`) that starts before the cap
    blocked = bytearray(limit + 1)  # blocked[i]: a cut at i would fall inside a tag

    def protect(start: int, end: int) -> None:
        for k in range(start + 1, min(end, limit + 1)):
            blocked[k] = 1

    for m in tags.finditer(window):
        if m.start() >= limit:
            break
        if m.end() - m.start() <= limit:
            protect(m.start(), m.end())
    blanked = tags.sub(lambda m: " " * len(m.group(0)), window)
    opened = max(blanked.rfind(o) for o in openers)
    if 0 <= opened < limit and len(text) - opened <= limit:  # a tag still being written
        protect(opened, limit + 1)

    for j in range(limit - 1, limit // 2 - 1, -1):
        ch = text[j]
        if ch in _CAP_MARKS and (ch in _CJK_MARKS or text[j + 1].isspace()) and not blocked[j + 1]:
            return j + 1
    for i in range(limit, 0, -1):
        if (text[i - 1].isspace() or text[i].isspace()) and not blocked[i] and not text[:i].isspace():
            return i
    if _speakable(text[:limit]):
        for i in range(limit, 0, -1):
            if not blocked[i] and _speakable(text[:i]):
                return i
    return limit


def split_text(
    text: str, limit: int, tags: re.Pattern[str] = INLINE_TAG, openers: tuple[str, ...] = ("[",)
) -> list[str]:
    """`text` as pieces of at most `limit` characters, cut by `cap_cut` (stripped, none empty)."""
    pieces: list[str] = []
    while (cut := cap_cut(text, limit, tags, openers)) is not None:
        head, text = text[:cut].strip(), text[cut:]
        if head:
            pieces.append(head)
    if text.strip():
        pieces.append(text.strip())
    return pieces


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
