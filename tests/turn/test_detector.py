"""End-of-turn detection from the words."""

from __future__ import annotations

import pytest

from agent_runtime.turn.detector import HeuristicTurnDetector


@pytest.mark.parametrize(
    "text",
    [
        "What time do you open tomorrow?",
        "I want to return my headphones.",
        "Thanks, that's all.",
        "No",
        "Do you deliver on weekends",
        "",
    ],
)
def test_complete(text: str) -> None:
    assert HeuristicTurnDetector().is_complete(text)


@pytest.mark.parametrize(
    "text",
    [
        "Hi, I'd like to know",
        "Hi, I'd like to know.",  # Whisper often closes a fragment with a period
        "I was wondering",
        "My order number is,",
        "I need help with my",
        "So I bought it and",
        "Well...",
        "Can you tell me about the",
    ],
)
def test_incomplete(text: str) -> None:
    assert not HeuristicTurnDetector().is_complete(text)
