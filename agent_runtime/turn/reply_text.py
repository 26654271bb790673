"""The text of one reply as the LLM writes it: capped in length, handed to TTS only at word boundaries.

`ReplyText.add(delta)` returns the part of the text that may go to the TTS now. A word still being
written (a trailing run of letters or digits) is held back until the next delta shows where it ends,
so a cut at `max_chars` never falls inside text the TTS already has. Punctuation ends a word, so a
clause mark at the end of a delta ("Sure,", "help!") still reaches the TTS at once.
"""

from __future__ import annotations

import re
from enum import Enum

# Longer runs without spaces (CJK text, a URL) are not held back: they are not one word.
MAX_HELD_CHARS = 48
_TRAILING_WORD = re.compile(r"\S*\w$")
_LAST_SPACE = re.compile(r".*\s", re.DOTALL)


class LLMOutcome(Enum):
    """How the LLM stream of a reply ended."""

    COMPLETE = "complete"
    """The stream ended by itself."""
    FAILED = "failed"
    """No words at all (error, first-token timeout, empty reply): the fallback line is spoken."""
    BROKE_OFF = "broke_off"
    """Stalled or failed after its first words: they are kept, then the stall line is spoken."""
    TRUNCATED = "truncated"
    """Reached `llm.max_reply_chars`: the stream was closed and the text cut at a word boundary."""


class ReplyText:
    """Accumulates LLM deltas up to `max_chars`; tracks what was handed to the TTS."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.text = ""
        self.truncated = False
        self._sent = 0  # characters of `text` handed to the TTS

    def add(self, delta: str) -> str:
        """Take a delta; return the text to push to the TTS now. Sets `truncated` at the cap."""
        if self.truncated:
            return ""
        full = self.text + delta
        if len(full) > self.max_chars:
            self.text = self._cut(full)
            self.truncated = True
            return self.rest()
        self.text = full
        held = _TRAILING_WORD.search(full)
        end = len(full) if held is None or len(held.group()) > MAX_HELD_CHARS else held.start()
        return self._release(end)

    def rest(self) -> str:
        """Everything not yet handed to the TTS (at the end of the stream)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self._sent:
            return ""
        out, self._sent = self.text[self._sent : end], end
        return out

    def _cut(self, full: str) -> str:
        """`full` cut to `max_chars` at the last word boundary, never before what the TTS has."""
        kept = full[: self.max_chars]
        if not full[self.max_chars].isspace():
            space = _LAST_SPACE.match(kept, self._sent)
            if space is not None:
                kept = kept[: space.end() - 1]
            elif self._sent > 0:
                kept = kept[: self._sent]
            # else: one word longer than the cap, cut inside it
        stripped = kept.rstrip()
        return stripped if len(stripped) >= self._sent else kept
