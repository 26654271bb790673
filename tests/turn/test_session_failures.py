"""A dead, hanging or failing LLM, a TTS engine that dies mid-reply, and a caller who hangs up
mid-reply never kill the session."""

from __future__ import annotations

import asyncio
import socket
import threading

import numpy as np
import pytest
from aiohttp import web

from agent_runtime.config import CallerTurn
from agent_runtime.demo.caller import SimulatedCaller
from agent_runtime.demo.run import CallerLine, run_call
from agent_runtime.llm.openai_compat import OpenAICompatBackend
from agent_runtime.transport.loopback import LoopbackTransport
from agent_runtime.tts.base import UtteranceSynth
from agent_runtime.tts.stream import ChunkedSynthesizer
from agent_runtime.turn.session import Engines, Session
from tests.turn.conftest import fast_config
from tests.turn.fakes import DyingUtterance


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engines_with_llm(real_engines: Engines, llm) -> Engines:
    return Engines(real_engines.recognizer, llm, real_engines.synthesizer)


def _two_turns(say) -> list[CallerLine]:
    texts = ["What time do you open tomorrow?", "Do you deliver on weekends?"]
    return [CallerLine(CallerTurn(text=t), [say(t)]) for t in texts]


@pytest.mark.slow
def test_dead_llm_server_speaks_fallback_and_keeps_going(real_engines, say) -> None:
    llm = OpenAICompatBackend(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="x", timeout_s=2.0)
    config = fast_config()
    result = asyncio.run(run_call(config, _engines_with_llm(real_engines, llm), _two_turns(say)))
    assert len(result.metrics.turns) == 2
    for turn in result.metrics.turns:
        assert turn.llm_error
        assert turn.agent_text == config.llm.fallback_line
        assert turn.first_audio_out is not None  # the fallback line was spoken
    assert np.abs(result.recording[:, 1]).max() > 1000


@pytest.mark.slow
def test_hanging_llm_server_times_out_to_fallback(real_engines, say) -> None:
    """A server that accepts the request and never answers: the first-token timeout speaks the fallback."""
    port = _free_port()
    started = threading.Event()
    stop = threading.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        return web.Response()

    def serve() -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", hang)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await runner.cleanup()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(5)
    try:
        llm = OpenAICompatBackend(base_url=f"http://127.0.0.1:{port}/v1", model="x", timeout_s=30.0)
        config = fast_config(llm={"first_token_timeout_s": 1.5})
        line = [_two_turns(say)[0]]
        result = asyncio.run(run_call(config, _engines_with_llm(real_engines, llm), line))
        (turn,) = result.metrics.turns
        assert turn.agent_text == config.llm.fallback_line
        assert turn.first_audio_out - turn.user_speech_end < 4.0
    finally:
        stop.set()
        thread.join(5)


class _ExplodingLLM(OpenAICompatBackend):
    async def stream_chat(self, messages, options):  # type: ignore[override]
        yield "Let me "
        raise RuntimeError("plugin bug")


@pytest.mark.slow
def test_backend_raising_mid_stream_keeps_session_up(real_engines, say) -> None:
    result = asyncio.run(run_call(fast_config(), _engines_with_llm(real_engines, _ExplodingLLM()), _two_turns(say)))
    assert len(result.metrics.turns) == 2
    assert all("plugin bug" in (t.llm_error or "") for t in result.metrics.turns)


class _DyingTTS(ChunkedSynthesizer):
    def __init__(self, real: ChunkedSynthesizer) -> None:
        self.real = real
        self.sample_rate = real.sample_rate
        self.chunker_config = real.chunker_config

    def open_utterance(self) -> UtteranceSynth:
        return DyingUtterance(self.real.open_utterance())


@pytest.mark.slow
def test_tts_dying_mid_reply_keeps_the_session_and_only_the_heard_words(real_engines, say) -> None:
    engines = Engines(real_engines.recognizer, real_engines.llm, _DyingTTS(real_engines.synthesizer))
    config = fast_config(llm={"max_tokens": 60, "system_prompt": "Answer in three full sentences, with commas."})

    async def main() -> Session:
        transport = LoopbackTransport()
        session = Session(config, engines, transport)
        caller = SimulatedCaller(transport)
        await caller.start()
        task = asyncio.create_task(session.run())
        for text in ("Tell me about your return policy.", "And do you deliver on weekends?"):
            _, end = await caller.say(say(text))
            assert await caller.wait_for_agent_audio(end, 20.0) is not None  # the first segment is heard
            for _ in range(200):  # until the turn is filed (its TTS died after the first segment)
                if len(session.metrics.turns) == (1 if "return" in text else 2):
                    break
                await asyncio.sleep(0.05)
        await caller.stop()
        await asyncio.wait_for(task, 5.0)
        return session

    session = asyncio.run(main())
    assert len(session.metrics.turns) == 2  # the session kept answering
    for turn, answer in zip(session.metrics.turns, session.history[1::2], strict=True):
        assert turn.tts_error == "TTS worker died" and turn.llm_error is None
        assert not turn.interrupted  # no barge-in
        assert answer.interrupted  # the history marks the reply as cut short...
        assert answer.content and turn.agent_text == answer.content  # ...and keeps only the words played
        assert answer.content[-1] in ".!?,;:"  # the first segment, played to its end, and nothing after


async def _call_and_hang_up(config, engines: Engines, speech: np.ndarray) -> Session:
    transport = LoopbackTransport()
    session = Session(config, engines, transport)
    caller = SimulatedCaller(transport)
    await caller.start()
    task = asyncio.create_task(session.run())
    _, end = await caller.say(speech)
    assert await caller.wait_for_agent_audio(end, 20.0) is not None
    await asyncio.sleep(0.4)
    await caller.stop()  # hang up while the agent is talking
    await asyncio.wait_for(task, 5.0)
    return session


@pytest.mark.slow
def test_hang_up_mid_reply_ends_every_task(real_engines, say) -> None:
    config = fast_config(llm={"max_tokens": 80, "system_prompt": "Answer with at least four long sentences."})
    speech = say("Tell me about your return policy.")

    async def main() -> tuple[int, int]:
        before = len(asyncio.all_tasks())
        threads_before = threading.active_count()
        for _ in range(3):
            session = await _call_and_hang_up(config, real_engines, speech)
            (turn,) = session.metrics.turns
            assert turn.interrupted  # cut short by the hang-up, history says what was heard
            assert session.history[-1].interrupted
        await asyncio.sleep(0.2)
        return len(asyncio.all_tasks()) - before, threading.active_count() - threads_before

    extra_tasks, extra_threads = asyncio.run(main())
    assert extra_tasks == 0
    assert extra_threads <= 4  # the default executor's idle workers may stay, nothing else
