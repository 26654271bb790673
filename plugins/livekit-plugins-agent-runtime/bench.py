"""Time to first audio of a LiveKit `AgentSession`: our streaming TTS vs sentence-buffered TTS.

Both runs use livekit-agents' own voice pipeline, no room: the same caller question (piper speech,
16 kHz, real time) -> LiveKit's Silero VAD -> our Whisper STT -> the same deterministic LLM reply
(the `echo` backend, streaming one word every `--word-ms`) -> TTS -> a recording sink. Only the TTS
differs, on the same loaded engine:

- streaming: `agent_runtime.TTS.stream()`: our chunker releases the first clause to the engine;
- buffered: LiveKit's `tts.StreamAdapter` around our `synthesize()`, which waits for each whole
  sentence (LiveKit's sentence tokenizer) before synthesising it.

Time to first audio = first reply frame at the sink - the caller's last speech sample delivered.
One run each (after one warm-up turn each); prints both and the ratio.

    python plugins/livekit-plugins-agent-runtime/bench.py [--engine piper] [--word-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time

# A typical spoken reply: a short opening clause, then a long first sentence.
REPLY = (
    "Sure, I can check that for you, and the short answer is that our shop on Main Street opens at "
    "nine in the morning on every weekday. On Saturdays we open at ten. On Sundays we are closed."
)
QUESTION = "What are your opening hours?"


class _TimedBackend:
    """Wraps an LLM backend to note when its first delta of each reply came out."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.first_delta_at: list[float] = []

    async def stream_chat(self, messages, options):
        first = True
        async for delta in self.inner.stream_chat(messages, options):
            if first:
                self.first_delta_at.append(time.monotonic())
                first = False
            yield delta

    async def warmup(self) -> None:
        await self.inner.warmup()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _turn(stt_plugin, vad, tts_plugin, backend, caller_pcm) -> dict[str, float]:
    from livekit.agents import Agent, AgentSession
    from livekit.plugins import agent_runtime
    from livekit.plugins.agent_runtime.local_io import QueueAudioInput, RecordingAudioOutput

    session = AgentSession(
        stt=stt_plugin,
        llm=agent_runtime.LLM(backend=backend),
        tts=tts_plugin,
        vad=vad,
        turn_handling={"turn_detection": "vad", "endpointing": {"min_delay": 0.3}},
    )
    caller, speaker = QueueAudioInput(), RecordingAudioOutput()
    session.input.audio = caller
    session.output.audio = speaker
    await session.start(Agent(instructions="You are a helpful voice assistant."), record=False)
    try:
        caller.say(caller_pcm, trailing_silence_s=0.5)
        deadline = time.monotonic() + 120
        while speaker.first_frame_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if speaker.first_frame_at is None or caller.speech_ended_at is None:
            raise RuntimeError("the agent did not answer within 120 s")
        return {
            "ttfa": speaker.first_frame_at - caller.speech_ended_at,
            "after_llm": speaker.first_frame_at - backend.first_delta_at[-1],
        }
    finally:
        caller.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.aclose(), 30)
        await speaker.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="piper", help="agent-runtime TTS engine (default piper)")
    parser.add_argument("--word-ms", type=float, default=50.0, help="LLM pace: ms per word (default 50)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from agent_runtime_echo_llm import EchoBackend
    from livekit.agents import tts
    from livekit.plugins import agent_runtime, silero

    from agent_runtime.asr.whisper import WhisperRecognizer
    from agent_runtime.audio.frame import float_to_pcm16
    from agent_runtime.audio.resample import resample
    from agent_runtime.tts.registry import create_synthesizer

    options = {"noise_scale": 0.0, "noise_w_scale": 0.0} if args.engine == "piper" else {}
    synth = create_synthesizer(args.engine, options)
    synth.warmup()
    recognizer = WhisperRecognizer("tiny.en")
    recognizer.warmup()
    stt_plugin = agent_runtime.STT(recognizer=recognizer)
    vad = silero.VAD.load()
    caller_voice = create_synthesizer("piper", {"noise_scale": 0.0, "noise_w_scale": 0.0})
    caller_pcm = float_to_pcm16(resample(caller_voice.synthesize_text(QUESTION), caller_voice.sample_rate, 16_000))

    # The echo backend answers with `prefix` then a mirror of the question: the same reply each run.
    def backend() -> _TimedBackend:
        return _TimedBackend(EchoBackend(delay_s=args.word_ms / 1000, prefix=REPLY))

    variants = {
        "streaming": lambda: agent_runtime.TTS(synthesizer=synth),
        "buffered": lambda: tts.StreamAdapter(tts=agent_runtime.TTS(synthesizer=synth)),
    }
    results: dict[str, dict[str, float]] = {}
    for name, make in variants.items():
        await _turn(stt_plugin, vad, make(), backend(), caller_pcm)  # warm-up turn
        results[name] = await _turn(stt_plugin, vad, make(), backend(), caller_pcm)

    s, b = results["streaming"], results["buffered"]
    print(f"engine={synth.name} llm=echo@{args.word_ms:.0f}ms/word, one run each, time to first audio:")
    print(f"  streaming (agent_runtime.TTS.stream):        {s['ttfa'] * 1000:7.0f} ms  ({s['after_llm'] * 1000:.0f} ms after the LLM's first word)")
    print(f"  buffered  (tts.StreamAdapter + synthesize):  {b['ttfa'] * 1000:7.0f} ms  ({b['after_llm'] * 1000:.0f} ms after the LLM's first word)")
    print(f"  ratio buffered/streaming: {b['ttfa'] / s['ttfa']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
