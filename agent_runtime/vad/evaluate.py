"""Offline check of where the endpointer dates the end of speech (`python -m agent_runtime.vad.evaluate`).

Caller speech is synthesized by the embedded piper voice, so its end is known exactly. The true end of
speech is the end of the last 10 ms frame of the *clean* audio louder than `AUDIBLE_DBFS`; white noise
is then added at a few SNRs (relative to the speech's active level) and each method runs on the noisy
audio, frame by frame, as a call would feed it.

Per method and SNR it prints the offset of the dated end from the true end (p50/p95, ms), when the
stop event fires (the speculative reply starts then), and the false turn ends: cases where the silence
counted from a dated end reached `end_of_turn_ms` (the turn manager's rule) while the caller was still
mid-sentence. Sentences are spoken whole and split in two around a pause of each of `PAUSES_MS`.

Methods:
* `webrtcvad`: the end of the last frame webrtcvad calls voiced (`end_of_speech: webrtcvad`).
* `energy`: the endpointer's energy gate (`end_of_speech: energy`, the default).
* `silero@boundary`: webrtcvad's stop, re-dated to the end of the last Silero VAD window (32 ms) with
  speech probability >= 0.5 (Silero run over the whole stream; only when its ONNX model is installed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace

import numpy as np

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.level import AUDIBLE_DBFS, audible_span, dbfs
from agent_runtime.vad.endpointer import Endpointer, EndpointerConfig, VADEventType

RATE = 16_000
SENTENCES = [
    ("Hi, I would like to check the status of my order.", "I would like to check", "the status of my order."),
    ("Can I return a jacket that I bought last week?", "Can I return a jacket", "that I bought last week?"),
    ("My account number is four five six seven.", "My account number is", "four five six seven."),
    ("What time does the store open on Sunday?", "What time does the store", "open on Sunday?"),
    ("I need to change the delivery address please.", "I need to change", "the delivery address please."),
    ("Yes.", None, None),
    ("Thanks, that is all for today.", "Thanks, that is all", "for today."),
    ("Could you send the receipt to my email?", "Could you send the receipt", "to my email?"),
]
SNRS_DB: list[float | None] = [None, 30.0, 20.0, 10.0]  # None: clean
PAUSES_MS = [150, 250]


@dataclass
class Case:
    name: str
    pcm: np.ndarray  # clean, int16, with silence around the speech
    true_end: float  # seconds from the start of `pcm`
    speech_spans: list[tuple[float, float]]  # clean audible spans (a pause separates two)


def _trim(pcm: np.ndarray) -> np.ndarray:
    a, b = audible_span(pcm)
    return pcm[int(a * RATE) : int(b * RATE)]


def build_cases(say) -> list[Case]:
    """Whole sentences and sentences with a mid-sentence pause, 0.6 s of silence before, 1.2 s after."""
    lead, tail = np.zeros(int(0.6 * RATE), np.int16), np.zeros(int(1.2 * RATE), np.int16)
    cases = []
    for whole, first, second in SENTENCES:
        speech = _trim(say(whole))
        pcm = np.concatenate([lead, speech, tail])
        cases.append(
            Case(f"whole: {whole}", pcm, 0.6 + len(speech) / RATE, [(0.6, 0.6 + len(speech) / RATE)])
        )
        if first is None:
            continue
        a, b = _trim(say(first)), _trim(say(second))
        for pause in PAUSES_MS:
            gap = np.zeros(RATE * pause // 1000, np.int16)
            pcm = np.concatenate([lead, a, gap, b, tail])
            a_end = 0.6 + len(a) / RATE
            b_start = a_end + pause / 1000
            end = b_start + len(b) / RATE
            cases.append(
                Case(f"pause {pause} ms: {first} / {second}", pcm, end, [(0.6, a_end), (b_start, end)])
            )
    return cases


def add_noise(pcm: np.ndarray, snr_db: float | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = pcm.astype(np.float64)
    if snr_db is None:
        return pcm
    n = RATE // 100
    frames = [x[k * n : (k + 1) * n] for k in range(len(x) // n)]
    active = [f for f in frames if dbfs(f.astype(np.int16)) >= AUDIBLE_DBFS]
    speech_rms = np.sqrt(np.mean(np.concatenate(active) ** 2)) if active else 1000.0
    noise = rng.normal(0, speech_rms / 10 ** (snr_db / 20), len(x))
    return np.clip(np.round(x + noise), -32768, 32767).astype(np.int16)


@dataclass
class Outcome:
    end: float | None  # the last stop's dated end (s)
    stop_fired: float | None  # when that stop event fired (end of the frame that caused it)
    false_end: bool  # the turn would have ended mid-sentence


def run_endpointer(cfg: EndpointerConfig, pcm: np.ndarray, case: Case, end_of_turn_ms: int) -> Outcome:
    """Feed `pcm` frame by frame; apply the turn manager's end-of-turn rule to each stop."""
    ep = Endpointer(cfg)
    n = ep.frame_samples
    end = fired = None
    false_end = False
    for k in range(len(pcm) // n):
        frame = AudioFrame(pcm[k * n : (k + 1) * n], RATE, k * n / RATE)
        for ev in ep.process(frame):
            if ev.type is VADEventType.SPEECH_STOP:
                end, fired = ev.timestamp, frame.end_time
        # the turn manager: silence since the dated end >= end_of_turn while not in speech ends the turn
        if _turn_ends(end, ep, frame, end_of_turn_ms) and frame.end_time < case.true_end:
            false_end = True
    return Outcome(end, fired, false_end)


def _turn_ends(end: float | None, ep: Endpointer, frame: AudioFrame, end_of_turn_ms: int) -> bool:
    """The turn manager's rule: not in speech, and the silence since the dated end reached end_of_turn."""
    return end is not None and not ep.in_speech and frame.end_time - end >= end_of_turn_ms / 1000


class _Silero:
    def __init__(self) -> None:
        from livekit.plugins.silero.onnx_model import OnnxModel, new_inference_session

        self._model = OnnxModel(onnx_session=new_inference_session(True), sample_rate=RATE)

    def speech_windows_end(self, pcm: np.ndarray, before: float) -> float | None:
        """End of the last 32 ms window ending by `before` + 0.1 s with speech probability >= 0.5."""
        self._model.reset()
        w = self._model.window_size_samples
        x = pcm.astype(np.float32) / 32768.0
        last = None
        for k in range(len(x) // w):
            t_end = (k + 1) * w / RATE
            if t_end > before + 0.1:
                break
            if self._model(x[k * w : (k + 1) * w]) >= 0.5:
                last = t_end
        return last


def evaluate(say, end_of_turn_ms: int = 300, seeds: int = 2, silero: bool = True) -> dict[str, dict]:
    cases = build_cases(say)
    methods: dict[str, EndpointerConfig] = {
        "webrtcvad": EndpointerConfig(end_of_speech="webrtcvad"),
        "energy": EndpointerConfig(end_of_speech="energy"),
    }
    sil = None
    if silero:
        try:
            sil = _Silero()
        except Exception as exc:  # the model is optional
            print(f"silero: not available ({type(exc).__name__}: {exc})", file=sys.stderr)
    results: dict[str, dict] = {}
    for snr in SNRS_DB:
        label = "clean" if snr is None else f"{snr:.0f} dB"
        rows: dict[str, dict[str, list]] = {}
        for i, case in enumerate(cases):
            for seed in range(seeds if snr is not None else 1):
                pcm = add_noise(case.pcm, snr, seed=1000 * i + seed)
                for name, cfg in methods.items():
                    o = run_endpointer(cfg, pcm, case, end_of_turn_ms)
                    _collect(rows.setdefault(name, _empty()), o, case)
                    if name == "webrtcvad" and sil is not None and o.end is not None:
                        # the same stops, each re-dated by Silero (the stop still fires when webrtcvad's does)
                        e = sil.speech_windows_end(pcm, o.end)
                        so = replace(o, end=e if e is not None else o.end)
                        so.false_end = _false_end_at_boundary(cfg, pcm, case, end_of_turn_ms, sil)
                        _collect(rows.setdefault("silero@boundary", _empty()), so, case)
        results[label] = {name: _summary(r) for name, r in rows.items()}
    return results


def _false_end_at_boundary(cfg, pcm, case, end_of_turn_ms, sil) -> bool:
    """Turn manager's rule with each webrtcvad stop re-dated by Silero."""
    ep = Endpointer(cfg)
    n = ep.frame_samples
    end = None
    for k in range(len(pcm) // n):
        frame = AudioFrame(pcm[k * n : (k + 1) * n], RATE, k * n / RATE)
        for ev in ep.process(frame):
            if ev.type is VADEventType.SPEECH_STOP:
                e = sil.speech_windows_end(pcm[: (k + 1) * n], ev.timestamp)
                end = e if e is not None else ev.timestamp
        if _turn_ends(end, ep, frame, end_of_turn_ms) and frame.end_time < case.true_end:
            return True
    return False


def _empty() -> dict[str, list]:
    return {"offset": [], "fired": [], "false_end": [], "missed": []}


def _collect(row: dict[str, list], o: Outcome, case: Case) -> None:
    if o.end is None:
        row["missed"].append(case.name)
        return
    row["offset"].append((o.end - case.true_end) * 1000)
    row["fired"].append(((o.stop_fired or o.end) - case.true_end) * 1000)
    row["false_end"].append(o.false_end)


def _summary(row: dict[str, list]) -> dict:
    off, fired = np.asarray(row["offset"]), np.asarray(row["fired"])
    return {
        "n": len(off),
        "offset_p50_ms": float(np.percentile(off, 50)) if len(off) else None,
        "offset_p95_ms": float(np.percentile(np.abs(off), 95)) if len(off) else None,
        "offset_min_ms": float(off.min()) if len(off) else None,
        "stop_fires_p50_ms": float(np.percentile(fired, 50)) if len(fired) else None,
        "false_turn_ends": int(sum(row["false_end"])),
        "missed": len(row["missed"]),
    }


def say_with_piper():
    """Text -> int16 16 kHz speech by the embedded piper voice (deterministic, cached per text)."""
    from agent_runtime.audio.frame import float_to_pcm16
    from agent_runtime.audio.resample import resample
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    voice = PiperSynthesizer(noise_scale=0.0, noise_w_scale=0.0)
    cache: dict[str, np.ndarray] = {}

    def say(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = float_to_pcm16(resample(voice.synthesize_text(text), voice.sample_rate, RATE))
        return cache[text]

    return say


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--end-of-turn-ms", type=int, default=300)
    p.add_argument("--seeds", type=int, default=2, help="noise draws per case and SNR")
    p.add_argument("--no-silero", action="store_true")
    args = p.parse_args(argv)
    results = evaluate(say_with_piper(), args.end_of_turn_ms, args.seeds, silero=not args.no_silero)
    print(
        f"end of speech vs the last 10 ms frame above {AUDIBLE_DBFS:.0f} dBFS (clean audio); "
        f"false turn ends at end_of_turn_silence_ms={args.end_of_turn_ms}"
    )
    print(
        f"{'noise':<8}{'method':<18}{'n':>4}{'p50':>8}{'|p95|':>8}{'min':>8}{'stop fires p50':>16}"
        f"{'false ends':>12}{'missed':>8}"
    )
    for snr, methods in results.items():
        for name, r in methods.items():
            print(
                f"{snr:<8}{name:<18}{r['n']:>4}{r['offset_p50_ms']:>8.0f}{r['offset_p95_ms']:>8.0f}"
                f"{r['offset_min_ms']:>8.0f}{r['stop_fires_p50_ms']:>16.0f}{r['false_turn_ends']:>12}"
                f"{r['missed']:>8}"
            )
    print("offsets in ms: dated end - true end (negative: dated before the last audible sound)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
