"""The segment cap: no text path hands an engine an unbounded segment, whatever the punctuation."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from agent_runtime.tts.chunker import ChunkerConfig, TextChunker, cap_cut, split_text
from agent_runtime.tts.s2pro.chunking import S2ProChunkerConfig, S2ProTextChunker
from agent_runtime.tts.s2pro.synthesizer import S2ProSynthesizer
from agent_runtime.tts.stream import ChunkedSynthesizer

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "we", "talk", "about", "many",
    "other", "things", "here", "today",
]  # fmt: skip


def unpunctuated(n: int, seed: int = 1) -> str:
    """About `n` characters of words, no punctuation at all."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n:
        out.append(rng.choice(WORDS))
        size += len(out[-1]) + 1
    return " ".join(out)


def run(chunker: TextChunker, deltas: list[str]) -> list[str]:
    out: list[str] = []
    for delta in deltas:
        out += chunker.push(delta)
    return out + chunker.flush()


def word_deltas(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


@pytest.mark.parametrize("cap", [40, 100, 250])
@pytest.mark.parametrize("whole", [True, False])
def test_unpunctuated_text_is_cut_at_word_boundaries_within_the_cap(cap: int, whole: bool) -> None:
    text = unpunctuated(3000)
    chunker = TextChunker(ChunkerConfig(max_chars=cap))
    segments = run(chunker, [text] if whole else word_deltas(text))
    assert all(len(s) <= cap for s in segments)
    assert " ".join(segments) == text  # every cut at a space: no word split, nothing lost
    assert len(segments) >= len(text) // cap
    assert min(len(s) for s in segments[:-1]) > cap - 20  # cut at the last space, not early


def test_the_cap_releases_segments_while_text_streams() -> None:
    """The cap is applied as deltas arrive, not only at flush: what is held back stays under it."""
    chunker = TextChunker(ChunkerConfig(max_chars=100))
    text = unpunctuated(2000)
    pushed = released = 0
    for delta in word_deltas(text):
        pushed += len(delta.replace(" ", ""))
        released += sum(len(s.replace(" ", "")) for s in chunker.push(delta))
        assert pushed - released <= 100
    assert released >= pushed - 100  # all but the last segment before flush
    assert all(len(s) <= 100 for s in chunker.flush())


def test_default_cap_is_250_and_s2pro_keeps_300() -> None:
    assert ChunkerConfig().max_chars == 250
    assert S2ProChunkerConfig().max_chars == 300
    assert all(len(s) <= 250 for s in run(TextChunker(), [unpunctuated(1000)]))
    s2 = run(S2ProTextChunker(), [unpunctuated(1000)])
    assert max(len(s) for s in s2) > 250 and all(len(s) <= 300 for s in s2)


def test_the_cap_prefers_a_clause_mark_then_the_last_space() -> None:
    head = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda, mu nu xi omicron pi"
    text = head + " rho sigma tau upsilon phi chi psi omega" * 5
    cut = cap_cut(text, 100)
    assert cut is not None and text[:cut].endswith("lambda,")  # the comma lies in the window's second half
    early = "alpha, " + "beta gamma delta " * 20
    cut = cap_cut(early, 100)
    assert cut is not None and early[cut - 1] == " " and cut > 90  # a comma too early is not worth it
    # in a stream, a later segment reaching the cap is cut after its comma, below later_max_chars
    chunker = TextChunker(ChunkerConfig(max_chars=100))
    assert chunker.push("Yes. ") == ["Yes."]
    assert chunker.push(text + " ")[0].endswith("lambda,")
    assert cap_cut("short", 100) is None


def test_the_cap_never_cuts_inside_a_tag() -> None:
    rng = random.Random(3)
    words = [rng.choice([*WORDS, "[laughs softly]", "[excited tone]"]) for _ in range(600)]
    text = " ".join(words)
    for deltas in ([text], word_deltas(text), list(text)):
        segments = run(TextChunker(ChunkerConfig(max_chars=60)), deltas)
        assert " ".join(segments) == text
        for s in segments:
            assert len(s) <= 60 and s.count("[") == s.count("]")


def test_an_unfinished_tag_at_the_cap_stays_whole() -> None:
    chunker = TextChunker(ChunkerConfig(max_chars=50))
    first = chunker.push("one two three four five six seven eight nine [whisper so")
    assert first == ["one two three four five six seven eight nine"]
    assert chunker.push("ftly] ten eleven") == []
    assert chunker.flush() == ["[whisper softly] ten eleven"]


def test_text_without_spaces_is_cut_at_the_cap() -> None:
    cjk = "我们一起去公园散步吧" * 100
    segments = run(TextChunker(ChunkerConfig(max_chars=100)), list(cjk))
    assert "".join(segments) == cjk and all(len(s) <= 100 for s in segments)
    assert [len(s) for s in segments[:-1]] == [100] * (len(segments) - 1)
    giant = "short " + "x" * 1000  # one giant word: the space first, then cuts anywhere
    segments = run(TextChunker(ChunkerConfig(max_chars=100)), [giant])
    assert segments[0] == "short" and "".join(segments[1:]) == "x" * 1000
    assert all(len(s) <= 100 for s in segments)


@pytest.mark.parametrize(
    "text",
    ["[" + "a " * 1000, "[laugh]" * 300, "<|speaker:0|>" + "[" * 900, "[" + "z" * 900 + "]", "!" * 2000],
)
def test_the_cap_holds_for_hostile_text(text: str) -> None:
    """Tags that never close, a tag longer than the cap, nothing speakable: still bounded."""
    for chunker in (TextChunker(ChunkerConfig(max_chars=100)), S2ProTextChunker(S2ProChunkerConfig(max_chars=100))):
        pushed = released = 0
        for i in range(0, len(text), 7):
            delta = text[i : i + 7]
            pushed += len(delta)
            released += sum(len(s) for s in chunker.push(delta))
            assert pushed - released <= 100 + len(text)  # sanity: nothing invented
        segments = chunker.flush()
        assert all(len(s) <= 100 for s in segments)
    assert all(len(p) <= 100 for p in split_text(text, 100))


def test_split_text_keeps_every_word() -> None:
    text = unpunctuated(1000)
    pieces = split_text(text, 120)
    assert " ".join(pieces) == text and all(len(p) <= 120 for p in pieces)
    assert split_text("  short text ", 120) == ["short text"]
    with pytest.raises(ValueError, match="max_chars"):
        ChunkerConfig(max_chars=0)


class _Engine(ChunkedSynthesizer):
    sample_rate = 16_000

    def open_utterance(self):  # pragma: no cover - not spoken here
        raise NotImplementedError


def test_max_segment_chars_lowers_any_engines_cap() -> None:
    engine = _Engine()
    assert engine.chunker().max_chars == 250
    assert engine.chunker(max_segment_chars=80).max_chars == 80
    assert engine.chunker(max_segment_chars=10_000).max_chars == 250  # lowers, never raises
    sentence = ChunkerConfig(first_min_words=10_000, first_min_chars=10_000)  # tts.first_segment: sentence
    capped = engine.chunker(sentence, max_segment_chars=80)
    assert capped.config.first_min_words == 10_000 and capped.max_chars == 80
    s2pro = S2ProSynthesizer(SimpleNamespace(sample_rate=44_100))  # type: ignore[arg-type]
    chunker = s2pro.chunker(max_segment_chars=120)
    assert isinstance(chunker, S2ProTextChunker) and chunker.max_chars == 120
    assert chunker.config.first_opener_break  # S2-Pro's own rules are kept
    assert s2pro.chunker(max_segment_chars=1000).max_chars == 300
    text = "<|speaker:0|>" + unpunctuated(1000)
    assert all(len(s) <= 120 for s in run(chunker, word_deltas(text)))
