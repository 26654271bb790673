"""End-of-turn detection from the words: does the caller sound finished?

Silence alone cannot tell "Hi, I'd like to know..." (a breath mid-sentence) from "What time do you
open?" (done). The turn manager waits `end_of_turn_silence_ms` after a complete-sounding transcript
and `incomplete_turn_silence_ms` after one that sounds unfinished. This is a transparent heuristic;
`TurnDetector` is the seam for a model-based detector.
"""

from __future__ import annotations

import re
from typing import Protocol

_TRAILING_FUNCTION_WORDS = frozenset(
    ["and", "or", "but", "so", "because", "to", "the", "a", "an", "of", "for", "with", "like", "my", "your", "our", "their", "his", "her", "its", "is", "are", "was", "were", "am", "be", "i", "i'd", "i'm", "i'll", "we", "we're", "you", "you're", "it's", "that", "which", "who", "what", "when", "where", "if", "than", "then", "about", "in", "on", "at", "from", "into", "by", "as", "um", "uh", "er", "just", "really", "very", "also", "can", "could", "would", "should", "will", "want", "need", "please", "the"]
)
_OPEN_INFINITIVE = re.compile(
    r"\b(like|love|want|wanted|need|needed|going|trying|try|have|hoping|wondering|wanted) to (\w+)$"
)
_WONDERING = re.compile(r"\b(wondering|wonder|asking|curious)$")


class TurnDetector(Protocol):
    def is_complete(self, transcript: str) -> bool:
        """True if the caller sounds done speaking after saying `transcript`."""
        ...


class HeuristicTurnDetector:
    """Unfinished if the text trails off ('...', ',') or ends on a word that needs a continuation."""

    def is_complete(self, transcript: str) -> bool:
        text = transcript.strip()
        if not text:
            return True
        if text.endswith(("...", "…", ",", "-", "—", ";", ":")):
            return False
        words = re.findall(r"[a-z']+", text.lower())
        if not words:
            return True
        tail = " ".join(words[-4:])
        if words[-1] in _TRAILING_FUNCTION_WORDS:
            return False
        return not (_OPEN_INFINITIVE.search(tail) or _WONDERING.search(tail))
