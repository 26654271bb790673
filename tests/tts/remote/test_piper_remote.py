"""The remote engine against a real piper `tts-serve`: same segments and audio as piper in process."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from agent_runtime.errors import BackendError
from agent_runtime.tts.base import SpeechOptions, UnsupportedSpeechOption
from agent_runtime.tts.remote.stream_client import StreamState
from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer
from tests.tts.remote.conftest import REPLY_DELTAS, get_json, metric, speak


def _same(remote: list, local: list) -> None:
    assert [t for t, _ in remote] == [t for t, _ in local]
    for (text, a), (_, b) in zip(remote, local, strict=True):
        assert a.dtype == np.int16 and len(a) > 0, text
        assert np.array_equal(a, b), text


@pytest.mark.slow
def test_piper_over_remote_equals_local(piper_server, piper_voice) -> None:
    async def main() -> None:
        remote = RemoteSynthesizer([piper_server.url])
        assert remote.sample_rate == piper_voice.sample_rate and remote.engine == "piper"
        try:
            got = await speak(remote)
            again = await speak(remote)  # the second stream reuses the idle connection
            assert sum(len(s.idle) for s in remote.pool.servers) == 1
        finally:
            await remote.aclose()
        want = await speak(piper_voice)
        assert len(want) >= 3
        _same(got, want)
        _same(again, want)

    asyncio.run(main())


@pytest.mark.slow
def test_chunking_and_segment_cap_go_to_the_server(piper_server, piper_voice) -> None:
    from agent_runtime.tts.chunker import ChunkerConfig

    chunking = ChunkerConfig(first_min_words=10_000, first_min_chars=10_000)

    async def main() -> None:
        remote = RemoteSynthesizer([piper_server.url])
        try:
            got = await speak(remote, chunking=chunking, max_segment_chars=40)
        finally:
            await remote.aclose()
        want = await speak(piper_voice, chunking=chunking, max_segment_chars=40)
        assert all(len(t) <= 40 for t, _ in want)
        _same(got, want)

    asyncio.run(main())


@pytest.mark.slow
def test_barge_in_cancels_on_the_server(piper_server) -> None:
    url = piper_server.url
    before = metric(url, "tts_streams_total", endpoint="stream", outcome="cancelled")

    async def main() -> None:
        remote = RemoteSynthesizer([url])
        try:
            stream = remote.open_stream()
            stream.push_text("Hello there, this is the first part of a long reply. " * 3)
            chunks = aiter(stream)
            first = await anext(chunks)
            assert len(first.audio) or first.segment_final
            assert stream.state is StreamState.STREAMING
            await stream.cancel()
            assert stream.state is StreamState.CANCELLED
            assert [c async for c in chunks] == []
            assert stream.push_text("more") == 0
            deadline = time.monotonic() + 5
            while get_json(url + "/readyz")["streams"] != 0:
                assert time.monotonic() < deadline, "the server kept the cancelled stream"
                await asyncio.sleep(0.05)
            # the connection went back to the pool once the server's done came
            await asyncio.sleep(0.2)
            assert sum(len(s.idle) for s in remote.pool.servers) == 1
            assert [t for t, _ in await speak(remote)]  # and carries the next stream
        finally:
            await remote.aclose()

    asyncio.run(main())
    assert metric(url, "tts_streams_total", endpoint="stream", outcome="cancelled") == before + 1


@pytest.mark.slow
def test_cancel_before_connecting_ends_quietly(piper_server) -> None:
    async def main() -> None:
        remote = RemoteSynthesizer([piper_server.url])
        try:
            stream = remote.open_stream()
            stream.push_text("Hello there, how are you today?")
            await stream.cancel()
            assert [c async for c in stream] == []
            assert stream.state is StreamState.CANCELLED
        finally:
            await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_server_errors_end_the_stream_with_its_message(piper_server) -> None:
    async def main() -> None:
        remote = RemoteSynthesizer([piper_server.url])
        try:
            # /v1/info names what the engine honours: the rest is refused at open, as in process
            assert remote.supported_options is not None and "max_new_tokens" not in remote.supported_options
            with pytest.raises(UnsupportedSpeechOption, match="max_new_tokens"):
                remote.open_stream(options=SpeechOptions(max_new_tokens=5))
            remote.supported_options = None  # as with a server whose /v1/info names none: it refuses
            stream = remote.open_stream(options=SpeechOptions(max_new_tokens=5))
            stream.push_text("Hello there.")
            stream.flush()
            with pytest.raises(BackendError, match="unsupported"):
                _ = [c async for c in stream]
            assert stream.state is StreamState.FAILED
        finally:
            await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_sglang_protocol_against_tts_serve(piper_server, piper_voice) -> None:
    async def main() -> None:
        remote = RemoteSynthesizer([piper_server.url], protocol="sglang-omni", engine_chunking="generic")
        try:
            got = await speak(remote)
            remote.supported_options = None  # the server itself refuses what it cannot honour
            with pytest.raises(BackendError, match="HTTP 400"):
                await speak(remote, ["Hello there."], options=SpeechOptions(max_new_tokens=5))
            # cancel mid-utterance closes the request
            stream = remote.open_stream()
            stream.push_text(" ".join(REPLY_DELTAS))
            chunks = aiter(stream)
            await anext(chunks)
            await stream.cancel()
            assert [c async for c in chunks] == []
            deadline = time.monotonic() + 5
            while get_json(piper_server.url + "/readyz")["streams"] != 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await remote.aclose()
        want = await speak(piper_voice)
        _same(got, want)

    asyncio.run(main())


@pytest.mark.slow
def test_sglang_blocking_synthesize(piper_server, piper_voice) -> None:
    remote = RemoteSynthesizer([piper_server.url], protocol="sglang-omni", engine_chunking="generic")
    text = "We open at nine tomorrow morning."
    got = np.concatenate(list(remote.open_utterance().synthesize(text)))
    want = np.concatenate([b for b in piper_voice.open_utterance().synthesize(text)])
    from agent_runtime.audio.frame import float_to_pcm16

    assert np.array_equal(got, want if want.dtype == np.int16 else float_to_pcm16(want))


@pytest.mark.slow
def test_fifty_concurrent_streams(piper_server) -> None:
    async def main() -> None:
        remote = RemoteSynthesizer([piper_server.url], first_audio_timeout_s=120, read_timeout_s=120)
        try:
            results = await asyncio.gather(
                *(
                    speak(remote, [f"Caller {i}, your table", " is ready now. Thank you for waiting."])
                    for i in range(50)
                )
            )
        finally:
            await remote.aclose()
        for i, segments in enumerate(results):
            assert [t for t, _ in segments] == [
                f"Caller {i}, your table is ready now.",
                "Thank you for waiting.",
            ]
            assert all(len(a) > 0 for _, a in segments)

    asyncio.run(main())
    assert get_json(piper_server.url + "/readyz")["streams"] == 0
