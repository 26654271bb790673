"""livekit-agents' own voice pipeline (`AgentSession`) on our STT, LLM and TTS plugins, without a room.

Caller speech (piper, 16 kHz) goes in through a custom `AudioInput` in real time; LiveKit's Silero
VAD (its ONNX model ships in the livekit-plugins-silero wheel) cuts the turn, our Whisper STT
transcribes it, our LLM plugin answers (the `echo` backend from plugins/echo_llm: deterministic, no
model), and our streaming TTS speaks into a custom `AudioOutput`.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed (deploy/setup.sh installs it)")
pytest.importorskip("livekit.plugins.agent_runtime", reason="livekit-plugins-agent-runtime is not installed")
pytest.importorskip("livekit.plugins.silero", reason="livekit-plugins-silero is not installed")

from livekit.agents import Agent, AgentSession
from livekit.plugins import agent_runtime, silero
from livekit.plugins.agent_runtime.local_io import QueueAudioInput, RecordingAudioOutput

from tests.livekit.test_tts_plugin import CancelSpy, _overlap

pytestmark = pytest.mark.slow

LONG_PREFIX = (
    "Let me tell you everything about our opening hours, "
    "because there is a lot to say about them. We open at nine every weekday morning. "
    "On Saturdays we open a little later, at ten, and we close early in the afternoon. "
    "On Sundays the shop stays closed, but the website takes orders all day long. "
    "During the holidays the hours change, so please check the calendar before you come."
)


def _echo_backend(prefix: str = "", delay_s: float = 0.01):
    try:
        from agent_runtime_echo_llm import EchoBackend
    except ImportError:
        pytest.skip("the echo LLM plugin (plugins/echo_llm) is not installed")
    return EchoBackend(delay_s=delay_s, prefix=prefix)


@pytest.fixture(scope="module")
def stt_plugin(whisper):
    return agent_runtime.STT(recognizer=whisper)


@pytest.fixture(scope="module")
def vad():
    return silero.VAD.load()


async def _run_session(stt_plugin, vad, synth, backend, aligned: bool = False):
    session = AgentSession(
        stt=stt_plugin,
        llm=agent_runtime.LLM(backend=backend),
        tts=agent_runtime.TTS(synthesizer=synth, aligned_transcript=aligned),
        vad=vad,
        use_tts_aligned_transcript=aligned,
        turn_handling={
            "turn_detection": "vad",
            "endpointing": {"min_delay": 0.3},
            "interruption": {"mode": "vad", "min_duration": 0.3, "resume_false_interruption": False},
        },
    )
    caller, speaker = QueueAudioInput(), RecordingAudioOutput()
    session.input.audio = caller
    session.output.audio = speaker
    assistant: list = []
    events: list[str] = []  # what happened, for failure messages

    def on_item(ev) -> None:
        if getattr(ev.item, "role", None) == "assistant":
            assistant.append(ev.item)
            events.append(f"assistant(interrupted={ev.item.interrupted}): {ev.item.text_content!r}")
        elif getattr(ev.item, "role", None) == "user":
            events.append(f"user: {ev.item.text_content!r}")

    session.on("conversation_item_added", on_item)
    session.on("agent_state_changed", lambda ev: events.append(f"agent {ev.new_state}"))
    session.on("user_state_changed", lambda ev: events.append(f"user {ev.new_state}"))
    await session.start(Agent(instructions="You are a helpful voice assistant."), record=False)
    return session, caller, speaker, assistant, events


async def _wait_for(predicate, timeout: float, events: list[str] | None = None, what: str = "") -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}; events: {events}")


async def _close(session, caller, speaker) -> None:
    caller.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.aclose(), 30)
    await speaker.aclose()


@pytest.mark.parametrize("aligned", [False, True], ids=["livekit-paced-transcript", "segment-aligned-transcript"])
async def test_agent_session_answers_the_caller(stt_plugin, vad, piper_voice, say, transcribe, aligned) -> None:
    """With `aligned`, LiveKit's transcript follows the segments our TTS reports (TimedStrings)."""
    synth = CancelSpy(piper_voice)
    session, caller, speaker, assistant, events = await _run_session(stt_plugin, vad, synth, _echo_backend(), aligned)
    try:
        caller.say(say("Hello, I would like to order a large pizza."), trailing_silence_s=0.5)
        await _wait_for(lambda: assistant, 120, events, "the reply")
        reply = assistant[0]
        text = reply.text_content or ""
        assert "pizza" in text.lower(), text  # our STT heard the caller, our LLM answered it
        assert text.split() == synth.streams[0].pushed.split()  # the history holds what was spoken
        pcm, rate = speaker.audio()
        assert len(pcm) / rate > 1.0
        assert float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > 300  # not silence
        heard = transcribe(pcm, rate)
        assert _overlap(text, heard) >= 0.7, (text, heard)
        assert not reply.interrupted
        assert synth.streams and not synth.streams[0].cancelled  # spoken to the end, not cancelled
    finally:
        await _close(session, caller, speaker)


async def test_interruption_stops_our_tts(stt_plugin, vad, piper_voice, say) -> None:
    synth = CancelSpy(piper_voice)
    # The LLM writes slowly (about 12 s for the long reply), so our stream is still open when the
    # caller interrupts, however fast the engine synthesises what it has: the interruption must cancel it.
    session, caller, speaker, assistant, events = await _run_session(
        stt_plugin, vad, synth, _echo_backend(prefix=LONG_PREFIX, delay_s=0.12)
    )
    try:
        caller.say(say("What are your opening hours?"), trailing_silence_s=0.5)
        await _wait_for(lambda: speaker.first_frame_at is not None, 120, events, "the reply's first audio")
        await asyncio.sleep(1.0)  # the agent is mid-reply
        caller.say(say("Wait, stop, I have another question."), trailing_silence_s=0.5)
        await _wait_for(lambda: speaker.interrupted_segments > 0, 60, events, "the sink to be cleared")
        await _wait_for(lambda: assistant, 60, events, "the interrupted reply in the history")
        assert assistant[0].interrupted, events
        await _wait_for(lambda: synth.streams and synth.streams[0].cancelled, 30, events, "our stream's cancel()")
        first_stream = synth.streams[0]
        produced = first_stream.chunks
        await asyncio.sleep(0.5)
        assert first_stream.chunks == produced  # the engine stopped
        assert speaker.frames
    finally:
        await _close(session, caller, speaker)
