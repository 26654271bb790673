"""Piper's first audio with the voice graph cut in two (chunked decoding) vs whole sentences.

    python -m agent_runtime.bench.piper_stream [--repeat 5] [--threads 1]

Both engines load the same voice in the same process and speak the same sentences alternately; per
sentence it prints the medians of the time to the first audio block and to the last, and the ratio
streamed / whole. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SENTENCES = [
    "Sure,",
    "I'm happy to help!",
    "Delivery is free for orders over fifty dollars.",
    "My return policy is flexible, but I must say that it is not a guarantee of a refund.",
]


def first_and_last_ms(synth, text: str) -> tuple[float, float]:
    """(first block, last block) in ms after the text was handed to a fresh utterance."""
    utterance = synth.open_utterance()
    started = time.perf_counter()
    first = None
    for _block in utterance.synthesize(text):
        first = first if first is not None else time.perf_counter() - started
    last = time.perf_counter() - started
    return (first or last) * 1000, last * 1000


def run(repeat: int, threads: int) -> list[dict[str, float | str]]:
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    streamed = PiperSynthesizer(threads=threads)
    whole = PiperSynthesizer(threads=threads, stream_first_frames=0)
    for synth in (streamed, whole):
        synth.warmup()
    rows: list[dict[str, float | str]] = []
    for text in SENTENCES:
        times: dict[str, list[tuple[float, float]]] = {"streamed": [], "whole": []}
        for _ in range(repeat):
            times["streamed"].append(first_and_last_ms(streamed, text))
            times["whole"].append(first_and_last_ms(whole, text))
        row: dict[str, float | str] = {"text": text}
        for name, pairs in times.items():
            row[f"{name}_first_ms"] = float(np.median([p[0] for p in pairs]))
            row[f"{name}_last_ms"] = float(np.median([p[1] for p in pairs]))
        row["audio_ms"] = len(whole.synthesize_text(text)) / whole.sample_rate * 1000
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per sentence and mode (medians)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of each voice")
    args = parser.parse_args(argv)
    rows = run(args.repeat, args.threads)
    print(f"{'sentence':<48}{'audio':>7}{'first: streamed':>17}{'whole':>7}{'ratio':>7}{'last: streamed':>16}{'whole':>7}")
    for r in rows:
        text = str(r["text"])
        label = text if len(text) <= 46 else text[:43] + "..."
        print(
            f"{label:<48}{r['audio_ms']:>7.0f}{r['streamed_first_ms']:>17.0f}{r['whole_first_ms']:>7.0f}"
            f"{float(r['streamed_first_ms']) / float(r['whole_first_ms']):>6.2f}x"
            f"{r['streamed_last_ms']:>16.0f}{r['whole_last_ms']:>7.0f}"
        )
    print(f"ms, medians of {args.repeat}, {args.threads} thread(s) each; first/last = the first/last audio block")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
