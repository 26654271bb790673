"""Does a short opener ("Yes,", "Sure,") pay as a first segment of its own on a given engine?

    python -m agent_runtime.bench.opener      # the embedded piper voice, medians of 5 (ms)

An engine that speaks a segment only once it is synthesized whole (piper) starts the opener alone
sooner than the whole first sentence; the split pays when the rest of the sentence is ready before
the opener has finished playing (no gap). Figures: docs/performance.md.
"""

from __future__ import annotations

OPENER_BENCH_REPLIES = [
    ("Yes,", "you can return it within thirty days of delivery."),
    ("Sure,", "I can check the status of your order for you."),
    ("Of course,", "the store opens at nine in the morning on Sundays."),
    ("Okay,", "your new delivery address is saved."),
]


def measure_opener_split(synth, opener: str, rest: str, repeats: int = 5) -> dict[str, float]:
    """Time to first audio of `opener` alone vs the whole first sentence, on a segment-by-segment
    engine (`synth.open_utterance().synthesize`), medians over `repeats` (ms).

    `opener_first_ms` / `whole_first_ms`: the engine's first audio block for each; `rest_ms`: the
    rest of the sentence, synthesized after the opener; `opener_audio_ms`: how long the opener plays.
    The split pays when the opener's first audio is earlier and the rest is ready before the opener
    has finished playing (`rest_ms <= opener_audio_ms`: no gap)."""
    import time

    import numpy as np

    def first_block(text: str) -> tuple[float, float]:
        utterance = synth.open_utterance()
        t = time.perf_counter()
        first, samples = None, 0
        for block in utterance.synthesize(text):
            first = first if first is not None else time.perf_counter() - t
            samples += len(block)
        return (first or 0.0) * 1000, samples / synth.sample_rate * 1000

    runs = {"opener_first_ms": [], "whole_first_ms": [], "rest_ms": [], "opener_audio_ms": []}
    first_block("Hello there.")  # warm
    for _ in range(repeats):
        whole, _dur = first_block(f"{opener} {rest}")
        first, audio_ms = first_block(opener)
        t = time.perf_counter()
        first_block(rest)
        runs["whole_first_ms"].append(whole)
        runs["opener_first_ms"].append(first)
        runs["rest_ms"].append((time.perf_counter() - t) * 1000)
        runs["opener_audio_ms"].append(audio_ms)
    out = {k: round(float(np.median(v)), 1) for k, v in runs.items()}
    out["pays"] = float(out["opener_first_ms"] < out["whole_first_ms"] and out["rest_ms"] <= out["opener_audio_ms"])
    return out


def _main() -> int:
    """`python -m agent_runtime.bench.opener`: the opener split on the embedded piper voice."""
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    synth = PiperSynthesizer()
    print(f"{'reply':<62}{'whole 1st':>10}{'opener 1st':>11}{'rest':>7}{'opener plays':>13}  pays")
    for opener, rest in OPENER_BENCH_REPLIES:
        r = measure_opener_split(synth, opener, rest)
        print(
            f"{opener + ' ' + rest:<62}{r['whole_first_ms']:>10.0f}{r['opener_first_ms']:>11.0f}"
            f"{r['rest_ms']:>7.0f}{r['opener_audio_ms']:>13.0f}  {'yes' if r['pays'] else 'no'}"
        )
    print("ms, medians of 5: time to the engine's first audio block; rest = the sentence after the opener")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
