"""The first segment may end right after a short opener ("Yes,", "Sure,") when the engine asks for it."""

from __future__ import annotations

import pytest

from agent_runtime.tts.chunker import ChunkerConfig, TextChunker
from agent_runtime.tts.piper_engine import PIPER_CHUNKING

OPENER = ChunkerConfig(first_opener_break=True)


def chunk(text: str, config: ChunkerConfig, step: int | None = None) -> list[str]:
    c = TextChunker(config)
    pieces = [text] if step is None else [text[i : i + step] for i in range(0, len(text), step)]
    out: list[str] = []
    for piece in pieces:
        out += c.push(piece)
    return out + c.flush()


@pytest.mark.parametrize("step", [None, 1, 4])
@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Yes, you can return it within thirty days.", "Yes,"),
        ("Sure, I can check that for you.", "Sure,"),
        ("Of course, the store opens at nine.", "Of course,"),
        ("OK, your address is saved.", "OK,"),
    ],
)
def test_an_opener_is_its_own_first_segment(text: str, first: str, step: int | None) -> None:
    segments = chunk(text, OPENER, step)
    assert segments[0] == first
    assert " ".join(segments) == text  # nothing lost or reordered


def test_the_opener_is_released_as_soon_as_its_comma_arrives() -> None:
    c = TextChunker(OPENER)
    assert c.push("Yes") == []
    assert c.push(",") == ["Yes,"]  # no wait for the next token: nothing else ends that way


@pytest.mark.parametrize(
    "text",
    [
        "Tuesday, or Wednesday at the latest.",  # not an opener
        "Apples, pears and plums are in stock.",
        "Well then, let us see what we can do.",  # more than the opener before the mark
    ],
)
def test_other_short_heads_still_wait_for_three_words(text: str) -> None:
    assert chunk(text, OPENER)[0] != text.split(",")[0] + ","


def test_only_the_first_segment_is_cut_after_an_opener() -> None:
    text = "Yes, it shipped on Monday and should arrive soon. Sure, I can also send the tracking number."
    assert chunk(text, OPENER) == [
        "Yes,",
        "it shipped on Monday and should arrive soon.",
        "Sure, I can also send the tracking number.",  # a later opener stays with its sentence
    ]


def test_without_the_option_the_opener_stays_with_its_sentence() -> None:
    assert ChunkerConfig().first_opener_break  # the default: local and remote piper cut the same way
    off = ChunkerConfig(first_opener_break=False)
    assert chunk("Yes, you can return it within thirty days.", off) == [
        "Yes, you can return it within thirty days."
    ]


def test_piper_cuts_after_an_opener_by_default_and_keeps_it_with_other_options() -> None:
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    assert PIPER_CHUNKING.first_opener_break
    assert PiperSynthesizer.chunker_config is PIPER_CHUNKING
    assert chunk("Sure, I can check that for you.", PiperSynthesizer.chunker_config)[0] == "Sure,"
