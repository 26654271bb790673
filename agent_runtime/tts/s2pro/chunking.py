"""Text segmentation for S2-Pro: the runtime's chunker plus S2-Pro's speaker tags and a size cap.

The generic `TextChunker` already releases the first segment at the first speakable clause, keeps
later segments at sentence ends, and never cuts inside a bracketed inline tag (`[whisper]`,
`[excited tone]`), a number ("3.5", "1,000", "9:30") or after an abbreviation ("Dr."), with CJK
punctuation for scripts without spaces. S2-Pro adds:

* speaker tags `<|speaker:N|>` are atomic and start a new segment (a turn boundary is the best cut
  there is, and every segment then speaks one speaker's words);
* a clause mark right after a letter ("tomorrow,") ends the clause at once, one LLM token earlier
  than waiting for the space after it (a comma in "1,000" follows a digit);
* inline tags do not count as words when deciding whether a first clause is speakable
  ("[laugh] Oh," is one word, not two);
* a reply's opener ("Sure,", "Well,", "Of course,") is a first segment of its own: every later
  segment continues the same utterance, so the pause after an opener costs no prosody, and the
  first audio no longer waits for the LLM to write a three-word clause;
* later segments are larger by default (each is one user turn of the conversation: longer turns
  give the model more prosodic context and cost fewer turn headers), capped at `max_chars` = 300
  by default (the reference's generate_long batches are <= 300 UTF-8 bytes). The cap is the
  generic chunker's (`cap_cut`: clause mark, else last space, else anywhere for text without
  spaces), with speaker tags `<|...|>` protected like inline tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent_runtime.tts.chunker import ChunkerConfig, TextChunker, _speakable

SPEAKER_TAG = re.compile(r"<\|speaker:\d+\|>")
_EAGER = ",;:，、；："
_TAGS = re.compile(r"\[[^\[\]]*\]|<\|[^|<>]*\|>")  # complete inline or special tags


@dataclass(frozen=True, slots=True)
class S2ProChunkerConfig(ChunkerConfig):
    """`ChunkerConfig` with S2-Pro's defaults (larger later segments, a 300-character cap)."""

    first_min_words: int = 3
    first_min_chars: int = 8
    later_min_chars: int = 60
    later_max_chars: int = 200
    first_opener_break: bool = True
    max_chars: int = 300


DEFAULT_CHUNKING = S2ProChunkerConfig()


class S2ProTextChunker(TextChunker):
    """`TextChunker` that respects speaker tags and caps segment length (see the module doc)."""

    tag_pattern = _TAGS
    tag_openers = ("[", "<|")

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        super().__init__(config or DEFAULT_CHUNKING)

    def _find_cut(self, final: bool) -> int | None:
        cuts = [c for c in (self._speaker_cut(), self._punctuation_cut(final)) if c is not None]
        return min(cuts) if cuts else None

    def _punctuation_cut(self, final: bool) -> int | None:
        """The generic rules on a copy of the buffer whose complete tags are blanked out (same
        length, so the cut indexes the real buffer): tags hold no cut points and count as no words."""
        real = self._buf
        blanked = _TAGS.sub(lambda m: " " * len(m.group(0)), real)
        # A clause mark right after a letter is a boundary whatever follows ("1,000" has a digit
        # before its comma): do not wait for the next token to show the space.
        open_tag = "[" in blanked or "<|" in blanked  # complete tags are blanked: this one is unfinished
        eager = len(blanked) >= 2 and blanked[-1] in _EAGER and blanked[-2].isalpha() and not open_tag
        self._buf = blanked + " " if eager else blanked
        try:
            cut = super()._find_cut(final)
        finally:
            self._buf = real
        return cut if cut is None or cut <= len(real) else None

    def _speaker_cut(self) -> int | None:
        """Cut right before a speaker tag that follows speakable text."""
        for m in SPEAKER_TAG.finditer(self._buf):
            if m.start() > 0 and _speakable(SPEAKER_TAG.sub(" ", self._buf[: m.start()])):
                return m.start()
        return None
