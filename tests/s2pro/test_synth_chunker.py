"""S2-Pro text segmentation: first clause early, tags/numbers/abbreviations whole, speaker turns, CJK."""

from __future__ import annotations

import pytest

from agent_runtime.tts.chunker import ChunkerConfig
from agent_runtime.tts.s2pro.chunking import S2ProChunkerConfig, S2ProTextChunker


def segments(text: str, by_char: bool = True, config: ChunkerConfig | None = None) -> list[str]:
    chunker = S2ProTextChunker(config)
    out: list[str] = []
    for delta in text if by_char else [text]:
        out += chunker.push(delta)
    return out + chunker.flush()


CASES = {
    "first clause early, later sentences larger": (
        "Let me check that for you. Our store opens at nine on weekdays and at ten on Saturdays. "
        "We close at six. Anything else?",
        ["Let me check that for you.",
         "Our store opens at nine on weekdays and at ten on Saturdays.",
         "We close at six. Anything else?"],
    ),
    "numbers and times stay whole": (
        "Sure thing, it costs 3.50 dollars, or 1,000 yen, and we open at 9:30 tomorrow.",
        ["Sure thing, it costs 3.50 dollars,", "or 1,000 yen, and we open at 9:30 tomorrow."],
    ),
    "abbreviations stay whole": (
        "Dr. Smith and Mr. Jones will see you at 5 p.m. today, e.g. after lunch. Room No. 5 is free.",
        ["Dr. Smith and Mr. Jones will see you at 5 p.m. today,",
         "e.g. after lunch. Room No. 5 is free."],
    ),
    "inline tags are never split and count as no words": (
        "[excited tone] Oh wow, that is [laughs, softly] so great, really. Let me [whisper] tell you a secret now.",
        ["[excited tone] Oh wow, that is [laughs, softly] so great,",
         "really. Let me [whisper] tell you a secret now."],
    ),
    "speaker tags start a segment": (
        "<|speaker:0|>Hello there, how are you doing? <|speaker:1|>Fine, thanks. <|speaker:0|>Great.",
        ["<|speaker:0|>Hello there, how are you doing?", "<|speaker:1|>Fine, thanks.", "<|speaker:0|>Great."],
    ),
    "CJK punctuation without spaces": (
        "你好，我是你的语音助手。今天天气很好，我们一起去公园散步吧！好的。",
        ["你好，我是你的语音助手。", "今天天气很好，我们一起去公园散步吧！好的。"],
    ),
    "Japanese": (
        "こんにちは、お電話ありがとうございます。本日はどのようなご用件でしょうか？",
        ["こんにちは、お電話ありがとうございます。", "本日はどのようなご用件でしょうか？"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_segments(name: str) -> None:
    text, expected = CASES[name]
    assert segments(text) == expected
    assert segments(text, by_char=False) == expected  # the same whatever the delta sizes


def test_first_clause_needs_three_words_without_tags() -> None:
    # "[laugh] Then," is one word (and no opener): no cut at its comma
    assert S2ProTextChunker().push("[laugh] Then, ") == []
    assert S2ProTextChunker().push("[laugh] Then, I see, ") == ["[laugh] Then, I see,"]


def test_no_cut_inside_an_unfinished_tag() -> None:
    chunker = S2ProTextChunker()
    assert chunker.push("Then so [excited, happy") == []
    assert chunker.push(" tone] yes, ") == ["Then so [excited, happy tone] yes,"]
    chunker = S2ProTextChunker()
    assert chunker.push("Okay then you are <|speaker:") == []
    assert chunker.push("1|>Hi") == ["Okay then you are"]


def test_text_before_a_speaker_tag_must_be_speakable() -> None:
    assert segments("[laugh] <|speaker:1|>Hi there, my friend.") == ["[laugh] <|speaker:1|>Hi there, my friend."]


def test_segments_are_capped_without_punctuation() -> None:
    text = " ".join(f"w{i}" for i in range(200))
    got = segments(text)
    assert " ".join(got) == text
    assert all(len(s) <= 300 for s in got) and len(got) > 1
    cjk = "我" * 700
    got = segments(cjk, config=S2ProChunkerConfig(max_chars=100))
    assert "".join(got) == cjk and max(len(s) for s in got) <= 100


def test_cap_never_cuts_a_tag() -> None:
    text = "a" * 290 + " [a long inline tag that crosses the cap] and then more words"
    got = segments(text)
    assert "".join(got).replace(" ", "") == text.replace(" ", "")
    assert any(s.startswith("[a long inline tag") for s in got)


def test_sentence_first_segment_override() -> None:
    # what the session passes for tts.first_segment: sentence
    cfg = ChunkerConfig(first_min_words=10_000, first_min_chars=10_000, first_opener_break=False)
    assert segments("Well, let me see, one moment. Then more.", config=cfg) == ["Well, let me see, one moment.", "Then more."]


def test_clause_mark_after_a_letter_releases_at_once() -> None:
    chunker = S2ProTextChunker()
    assert chunker.push("Then we are open tomorrow,") == ["Then we are open tomorrow,"]  # no wait for the space
    chunker = S2ProTextChunker()
    assert chunker.push("We sold more than 1,") == []  # "1,000" may follow
    assert chunker.push("000 of them, ") == ["We sold more than 1,000 of them,"]
    chunker = S2ProTextChunker()
    assert chunker.push("Oh so [excited, happy tone] yes,") == ["Oh so [excited, happy tone] yes,"]
    assert S2ProTextChunker().push("Well then [excited,") == []  # inside an unfinished tag


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Sure, we are open tomorrow, from nine until six.", "Sure,"),
        ("Of course, I can help with that.", "Of course,"),
        ("[laugh] Well, that is a good question.", "[laugh] Well,"),
        ("OKAY, let me see.", "OKAY,"),
        ("Hi John, how can I help you today?", "Hi John, how can I help you today?"),  # a name is no opener
        ("Sure thing, it costs 3.50 dollars.", "Sure thing, it costs 3.50 dollars."),
        ("Surely not, that cannot be right.", "Surely not, that cannot be right."),
    ],
)
def test_a_reply_opener_is_a_first_segment_of_its_own(text: str, first: str) -> None:
    got = segments(text)
    assert got[0] == first
    assert " ".join(got) == text


def test_opener_break_can_be_turned_off_and_only_applies_to_the_first_segment() -> None:
    off = S2ProChunkerConfig(first_opener_break=False)
    assert segments("Sure, we are open tomorrow, from nine.", config=off) == ["Sure, we are open tomorrow,", "from nine."]
    assert segments("We are open. Well, not on Sunday, sadly. But yes.")[:1] == ["We are open."]
    chunker = S2ProTextChunker()
    assert chunker.push("Sure,") == ["Sure,"]  # released with the comma token, no wait for the space
    assert chunker.push(" well,") == []
