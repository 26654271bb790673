"""What the caller heard of an interrupted reply."""

from __future__ import annotations

from agent_runtime.turn.reply import HeardText, _Segment


def test_fully_played_segments_and_a_partial_one() -> None:
    h = HeardText(sample_rate=16_000)
    h.segments[0] = _Segment("Sure, I can help.", produced=16_000, played=16_000, complete=True)
    h.segments[1] = _Segment("We open at nine tomorrow morning.", produced=32_000, played=16_000, complete=True)
    h.segments[2] = _Segment("Anything else?", produced=8_000, played=0, complete=True)
    assert h.text() == "Sure, I can help. We open at"


def test_unfinished_segment_is_not_over_counted() -> None:
    """A slow engine has produced only the first half second of a long sentence, all of it played."""
    h = HeardText(sample_rate=16_000)
    text = "Our return policy lets you bring back any item within thirty days with the receipt."
    h.segments[0] = _Segment(text, produced=8_000, played=8_000, complete=False)
    heard = h.text().split()
    assert 0 < len(heard) <= 3  # half a second of a ~5.6 s sentence, not all of it


def test_nothing_played_means_nothing_heard() -> None:
    h = HeardText()
    h.segments[0] = _Segment("Hello there.", produced=16_000, played=0, complete=True)
    assert h.text() == ""
