"""TextChunker: the first segment as early as is safe, never a cut in a tag, number or abbreviation."""

from __future__ import annotations

import pytest

from agent_runtime.tts.chunker import ChunkerConfig, TextChunker


def chunk(text: str, *, step: int | None = None, config: ChunkerConfig | None = None) -> list[str]:
    """Segments for `text` pushed whole (step None) or `step` characters at a time, then flushed."""
    c = TextChunker(config)
    pieces = [text] if step is None else [text[i : i + step] for i in range(0, len(text), step)]
    out: list[str] = []
    for piece in pieces:
        out += c.push(piece)
    return out + c.flush()


def released_before_flush(text: str) -> list[str]:
    c = TextChunker()
    return c.push(text)


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_first_segment_at_first_clause_once_three_words(step: int | None) -> None:
    text = "Sure thing, let me check. Your order shipped on Monday and it should arrive by Friday."
    assert chunk(text, step=step) == [
        "Sure thing, let me check.",
        "Your order shipped on Monday and it should arrive by Friday.",
    ]
    text = "I can help with that, just give me a moment to look it up for you."
    assert chunk(text, step=step) == ["I can help with that,", "just give me a moment to look it up for you."]


def test_first_clause_released_while_text_still_streams() -> None:
    c = TextChunker(ChunkerConfig(first_opener_break=False))  # openers: test_chunker_opener.py
    assert c.push("Of course, I can") == []  # "Of course," is two words: wait
    assert c.push(" help, ") == ["Of course, I can help,"]
    assert c.push("the store opens at nine") == []  # later segments wait for a sentence end
    assert c.push(" tomorrow morning and closes at six. Anything") == [
        "the store opens at nine tomorrow morning and closes at six."
    ]
    assert c.flush() == ["Anything"]


def test_short_sentence_releases_first_segment() -> None:
    assert released_before_flush("Yes. I can do that for you") == ["Yes."]
    assert released_before_flush("Hi! How") == ["Hi!"]
    assert released_before_flush("No. That is not possible") == ["No."]
    assert released_before_flush("Neither am I. But") == ["Neither am I."]


def test_later_short_sentences_are_merged() -> None:
    text = "Hello there, friend. Yes. No. Maybe later, we will see what happens tomorrow. Bye."
    assert chunk(text) == [
        "Hello there, friend.",
        "Yes. No. Maybe later, we will see what happens tomorrow.",
        "Bye.",
    ]


@pytest.mark.parametrize("step", [None, 1, 2])
def test_no_cut_inside_inline_tags(step: int | None) -> None:
    text = "[laugh, softly] Well that is funny, I agree. [sigh. long] Let us move on to the next thing."
    segments = chunk(text, step=step)
    assert segments == [
        "[laugh, softly] Well that is funny,",
        "I agree. [sigh. long] Let us move on to the next thing.",
    ]
    for segment in segments:
        assert segment.count("[") == segment.count("]")


@pytest.mark.parametrize("step", [None, 1])
def test_no_cut_inside_numbers(step: int | None) -> None:
    assert chunk("It costs 3.5 dollars per item today. Thanks", step=step) == [
        "It costs 3.5 dollars per item today.",
        "Thanks",
    ]
    assert chunk("We sold 1,000 units of it, said the manager.", step=step) == [
        "We sold 1,000 units of it,",
        "said the manager.",
    ]
    assert released_before_flush("The total is 3.") == []  # could still become 3.5


@pytest.mark.parametrize("step", [None, 1])
def test_no_cut_after_abbreviations(step: int | None) -> None:
    assert chunk("Dr. Smith will see you now. Please wait here.", step=step) == [
        "Dr. Smith will see you now.",
        "Please wait here.",
    ]
    assert chunk("Bring fruit, e.g. apples or pears. That is all.", step=step)[0] == "Bring fruit, e.g. apples or pears."
    assert chunk("Call Mr. J. Jones at 9 a.m. tomorrow. Thanks.", step=step)[0] == "Call Mr. J. Jones at 9 a.m. tomorrow."
    assert released_before_flush("See item No. 5 in the list") == []


def test_cjk_punctuation_needs_no_space() -> None:
    assert chunk("你好。我可以帮你查一下订单的状态，请稍等。") == ["你好。", "我可以帮你查一下订单的状态，请稍等。"]
    assert chunk("こんにちは、今日はとてもいい天気ですね。ありがとう！") == [
        "こんにちは、今日はとてもいい天気ですね。",
        "ありがとう！",
    ]


def test_closing_quotes_stay_with_their_sentence() -> None:
    assert chunk('He said "stop." Then he left the room quietly.') == [
        'He said "stop."',
        "Then he left the room quietly.",
    ]


def test_flush_drops_unspeakable_rest() -> None:
    c = TextChunker()
    assert c.push("All done, my friend. ") == ["All done, my friend."]
    assert c.flush() == []
    c = TextChunker()
    c.push("[laugh] ")
    assert c.flush() == []


def test_first_segment_does_not_wait_for_the_next_token_after_a_word() -> None:
    from agent_runtime.tts.chunker import TextChunker

    assert TextChunker().push("I'm happy to help!") == ["I'm happy to help!"]
    no_opener = ChunkerConfig(first_opener_break=False)  # openers: test_chunker_opener.py
    assert TextChunker(no_opener).push("Sure, we can do that,") == ["Sure, we can do that,"]
    assert TextChunker().push("Sure, we can do that,") == ["Sure,"]  # the rest waits for its sentence end
    # a number, an abbreviation or an initial may continue: wait for the next token
    assert TextChunker().push("The total is 3.") == []
    assert TextChunker().push("Please ask Dr.") == []
    assert TextChunker().push("My name is J.") == []
