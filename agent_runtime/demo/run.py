"""The demo call: a simulated caller talks to a real session over the loopback transport."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent_runtime.audio.resample import resample
from agent_runtime.audio.wav import read_audio, write_wav
from agent_runtime.config import AppConfig, CallerTurn
from agent_runtime.demo.caller import SimulatedCaller, UtteranceTiming
from agent_runtime.metrics.turns import MetricsCollector
from agent_runtime.transport.loopback import LoopbackTransport
from agent_runtime.tts.base import Synthesizer
from agent_runtime.turn.session import Engines, Session, SessionEvent

log = logging.getLogger("agent_runtime.demo")
RATE = 16_000


@dataclass
class CallerLine:
    """One caller turn ready to play: its parts (split at a mid-sentence pause) at 16 kHz."""

    turn: CallerTurn
    parts: list[np.ndarray]

    @property
    def text(self) -> str:
        return (self.turn.text or Path(self.turn.wav or "").name).replace("|", "").replace("  ", " ")


@dataclass
class DemoResult:
    metrics: MetricsCollector
    session: Session
    utterances: list[UtteranceTiming]
    events: list[SessionEvent] = field(default_factory=list)
    recording: np.ndarray | None = None


async def synthesize_text(synth: Synthesizer, text: str) -> np.ndarray:
    """Speak `text` completely with `synth`; int16 mono at 16 kHz."""
    stream = synth.open_stream()
    stream.push_text(text)
    stream.flush()
    blocks = [chunk.audio async for chunk in stream if len(chunk.audio)]
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)
    return resample(audio, synth.sample_rate, RATE)


async def prepare_caller(turns: list[CallerTurn], synth: Synthesizer) -> list[CallerLine]:
    lines = []
    for turn in turns:
        if turn.wav is not None:
            audio, _ = read_audio(turn.wav, target_rate=RATE)
            pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
            lines.append(CallerLine(turn, [pcm]))
            continue
        assert turn.text is not None
        texts = [t.strip() for t in turn.text.split("|")] if turn.pause_ms else [turn.text.replace("|", " ")]
        lines.append(CallerLine(turn, [await synthesize_text(synth, t) for t in texts if t]))
    return lines


async def run_call(
    config: AppConfig, engines: Engines, lines: list[CallerLine], *, mic_rate: int = RATE, mic_channels: int = 1
) -> DemoResult:
    """Run the whole call in real time; returns metrics, history and timings.

    The caller's microphone runs at `mic_rate` with `mic_channels` (the session resamples)."""
    transport = LoopbackTransport(output_sample_rate=RATE)
    metrics = MetricsCollector()
    events: list[SessionEvent] = []
    session = Session(config, engines, transport, metrics=metrics, on_event=events.append, session_id="demo")
    caller = SimulatedCaller(transport, rate=mic_rate, channels=mic_channels)
    utterances: list[UtteranceTiming] = []
    demo = config.demo

    async def script() -> None:
        await asyncio.sleep(0.5)  # a moment of line silence before the caller speaks
        for i, line in enumerate(lines):
            prev = utterances[-1] if utterances else None
            if line.turn.interrupt_after_ms is not None and prev is not None:
                started = await caller.wait_for_agent_audio(prev.end, demo.max_reply_wait_s)
                prev.agent_audio_start = started
                if started is not None:
                    await asyncio.sleep(max(0.0, started + line.turn.interrupt_after_ms / 1000 - time.monotonic()))
            start, end = await caller.say(line.parts[0])
            for part in line.parts[1:]:
                await asyncio.sleep((line.turn.pause_ms or 0) / 1000)
                _, end = await caller.say(part)
            utt = UtteranceTiming(line.text, start, end)
            utterances.append(utt)
            nxt = lines[i + 1] if i + 1 < len(lines) else None
            if nxt is None or nxt.turn.interrupt_after_ms is None:
                utt.agent_audio_start = await caller.wait_for_reply(
                    end, demo.wait_after_reply_ms, demo.max_reply_wait_s, lambda: session.busy
                )
        await caller.stop()

    t0 = time.monotonic()
    await caller.start()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run(), name="session")
        tg.create_task(script(), name="caller-script")
    t1 = time.monotonic()
    return DemoResult(metrics, session, utterances, events, transport.recording(t0, t1, RATE))


def format_report(result: DemoResult) -> str:
    """Transcript of both sides, a latency waterfall per turn, and the summary."""
    out = ["", "=== Transcript ==="]
    turns = {t.turn_id: t for t in result.metrics.turns}
    for t in turns.values():
        if t.premature_replies_dropped:
            out.append(f"  (a premature reply was dropped unheard {t.premature_replies_dropped}x: the caller kept talking)")
        out.append(f"  caller: {t.user_text}")
        mark = "  [interrupted by the caller]" if t.interrupted else ""
        out.append(f"  agent:  {t.agent_text}{mark}")
    out.append("")
    out.append("=== Latency per turn (ms after the end of the caller's speech, runtime clock) ===")
    for t in turns.values():
        v2v = t.voice_to_voice
        head = f"turn {t.turn_id}: voice-to-voice {v2v * 1000:.0f} ms" if v2v is not None else f"turn {t.turn_id}"
        out.append(head + (" (interrupted)" if t.interrupted else ""))
        out.append(t.waterfall())
    caller_side = [u.agent_audio_start - u.end for u in result.utterances if u.agent_audio_start]
    summary = result.metrics.summary()
    out.append("")
    out.append("=== Summary ===")
    for key in ("voice_to_voice_ms", "decision_to_audio_ms", "asr_final_ms", "llm_first_token_ms", "tts_first_audio_ms"):
        if key in summary:
            s = summary[key]
            out.append(f"  {key:<24} p50 {s['p50']:>7.1f}  p95 {s['p95']:>7.1f}  (n={int(s['n'])})")
    if caller_side:
        arr = np.asarray(caller_side) * 1000
        out.append(
            f"  {'heard_by_caller_ms':<24} p50 {np.percentile(arr, 50):>7.1f}  p95 {np.percentile(arr, 95):>7.1f}"
            "  (end of caller audio -> agent audio at the caller)"
        )
    return "\n".join(out)


def save_recording(result: DemoResult, path: str | Path) -> None:
    if result.recording is not None:
        write_wav(path, result.recording, RATE)
