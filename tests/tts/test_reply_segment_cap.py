"""`tts.max_segment_chars` reaches the engine's chunker in a real session (Reply -> open_stream)."""

from __future__ import annotations

import asyncio

import pytest

from agent_runtime.bench.instant import InstantLLM, InstantRecognizer
from agent_runtime.demo.caller import SimulatedCaller
from agent_runtime.transport.loopback import LoopbackTransport
from agent_runtime.turn.session import Engines, Session
from tests.tts.test_segment_cap import unpunctuated
from tests.turn.conftest import RecordingSynth, fast_config


@pytest.mark.slow
def test_a_long_unpunctuated_reply_reaches_the_engine_in_capped_segments(say) -> None:
    reply = unpunctuated(600)
    synth = RecordingSynth(sample_rate=16_000, seconds_per_char=0.001)
    engines = Engines(InstantRecognizer(), InstantLLM(reply), synth)
    config = fast_config(tts={"max_segment_chars": 60})

    async def main() -> None:
        transport = LoopbackTransport()
        session = Session(config, engines, transport)
        caller = SimulatedCaller(transport)
        await caller.start()
        task = asyncio.create_task(session.run())
        _, end = await caller.say(say("Tell me everything about it."))
        assert await caller.wait_for_agent_audio(end, 20.0) is not None
        for _ in range(400):
            if session.metrics.turns:
                break
            await asyncio.sleep(0.05)
        await caller.stop()
        await asyncio.wait_for(task, 5.0)

    asyncio.run(main())
    assert len(synth.spoken) >= 10
    assert all(len(s) <= 60 for s in synth.spoken)
    assert " ".join(synth.spoken) == reply


def test_synth_command_caps_segments_like_a_call(tmp_path) -> None:
    """`agent-runtime synth` takes tts.max_segment_chars from --config (else the default), as serve does."""
    import argparse

    from agent_runtime.commands.synth import max_segment_chars

    cfg = tmp_path / "c.yaml"
    cfg.write_text("tts:\n  max_segment_chars: 40\n")
    assert max_segment_chars(argparse.Namespace(config=cfg)) == 40
    assert max_segment_chars(argparse.Namespace(config=None)) == fast_config().tts.max_segment_chars
