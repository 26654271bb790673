"""The reply text's cap and the word-boundary hand-off to the TTS."""

from __future__ import annotations

from agent_runtime.turn.reply_text import MAX_HELD_CHARS, ReplyText


def _feed(deltas: list[str], cap: int) -> tuple[ReplyText, str]:
    text = ReplyText(cap)
    pushed = ""
    for delta in deltas:
        pushed += text.add(delta)
        if text.truncated:
            break
    return text, pushed + text.rest()


def test_words_reach_the_tts_whole_and_punctuation_at_once() -> None:
    text = ReplyText(1000)
    assert text.add("We") == ""  # the word may go on
    assert text.add(" op") == "We "
    assert text.add("en at nine") == "open at "
    assert text.add(".") == "nine."  # a sentence end is released with its last word
    assert text.add(" Sure,") == " Sure,"
    assert text.rest() == "" and not text.truncated


def test_under_the_cap_everything_is_spoken() -> None:
    text, pushed = _feed(["We open", " at nine."], 1000)
    assert pushed == text.text == "We open at nine." and not text.truncated


def test_cap_cuts_at_the_last_word_boundary_even_when_a_word_straddles_deltas() -> None:
    text, pushed = _feed(["wo", "rd "] * 10_000, 60)
    assert text.truncated
    assert pushed == text.text
    assert len(text.text.strip()) <= 60
    assert text.text.split() == ["word"] * len(text.text.split())


def test_cap_inside_a_delta() -> None:
    text, pushed = _feed(["Sure, I can help with that today"], 25)
    assert text.truncated and pushed == text.text == "Sure, I can help with"


def test_one_word_longer_than_the_cap_is_cut_inside() -> None:
    text, pushed = _feed(["x" * 100], 60)
    assert text.truncated and pushed == text.text == "x" * 60


def test_long_runs_without_spaces_are_not_held_back() -> None:
    text = ReplyText(1000)
    run = "字" * (MAX_HELD_CHARS + 1)
    assert text.add(run) == run
