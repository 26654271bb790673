"""Servers dying: before a stream (skipped transparently), mid-reply (the stream raises after the
audio it had; the next stream goes elsewhere), or going silent (the read timeout)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from agent_runtime.errors import BackendError
from agent_runtime.tts.remote.stream_client import StreamState
from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer
from tests.tts.remote.conftest import PIPER_TTS, metric, speak


@pytest.fixture
def two_servers(farm):
    a, b = farm.start(PIPER_TTS), farm.start(PIPER_TTS)
    yield a, b
    for proc in (a, b):
        farm.stop(proc)


@pytest.mark.slow
def test_server_killed_mid_reply(farm, two_servers) -> None:
    by_url = {p.url: p for p in two_servers}

    async def main() -> None:
        remote = RemoteSynthesizer(list(by_url), unhealthy_backoff_s=60)
        try:
            stream = remote.open_stream()
            stream.push_text("Sure, I can help with that. We open at nine tomorrow morning. ")
            chunks = aiter(stream)
            got = []
            while not (got and got[-1].segment_final):
                got.append(await anext(chunks))
            victim = stream.server_url
            assert victim in by_url
            await asyncio.to_thread(farm.kill, by_url[victim])
            stream.push_text("And we close at six in the evening.")
            stream.flush()
            with pytest.raises(BackendError, match="failed mid-reply"):
                async for chunk in chunks:
                    got.append(chunk)
            assert stream.state is StreamState.FAILED
            assert got[0].segment_id == 0 and len(got) >= 2
            # the next stream goes to the other server, transparently
            nxt = remote.open_stream()
            nxt.push_text("Anything else?")
            nxt.flush()
            assert [c.text async for c in nxt][-1] == "Anything else?"
            assert nxt.server_url != victim and nxt.servers_tried == [nxt.server_url]
            assert not remote.pool.describe()[list(by_url).index(victim)]["healthy"]
        finally:
            await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_dead_server_at_open_is_skipped(farm, two_servers) -> None:
    dead, alive = two_servers
    farm.kill(dead)

    async def main() -> None:
        # health polls far apart: the streams find the dead server themselves
        remote = RemoteSynthesizer([dead.url, alive.url], health_interval_s=3600, sample_rate=22050)
        remote.pool.bind()
        await asyncio.sleep(0.5)  # the first health poll has run (and found the dead server)
        remote.pool.servers[0].down_until = 0.0  # forget it: the next stream may try it
        remote.pool.servers[0].last_error = None
        try:
            for _ in range(3):
                segments = await speak(remote, ["Hello there, how are you today?"])
                assert [t for t, _ in segments] == ["Hello there, how are you today?"]
            assert not remote.pool.describe()[0]["healthy"]
            assert remote.pool.servers[0].last_error is not None  # a stream found it dead
        finally:
            await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_no_server_left_raises_naming_them(farm, two_servers) -> None:
    a, b = two_servers

    async def main() -> None:
        remote = RemoteSynthesizer([a.url, b.url], retries=1)
        farm_kill = asyncio.to_thread
        await farm_kill(farm.kill, a)
        await farm_kill(farm.kill, b)
        try:
            stream = remote.open_stream()
            stream.push_text("Hello there.")
            stream.flush()
            with pytest.raises(BackendError) as err:
                _ = [c async for c in stream]
            assert a.url in str(err.value) and b.url in str(err.value)
        finally:
            await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_silent_server_times_out_mid_reply(farm, two_servers) -> None:
    by_url = {p.url: p for p in two_servers}

    async def main() -> None:
        remote = RemoteSynthesizer(list(by_url), read_timeout_s=1.0, health_interval_s=3600)
        stopped = None
        try:
            stream = remote.open_stream()
            stream.push_text("Sure, I can help with that. ")
            chunks = aiter(stream)
            got = []
            while not (got and got[-1].segment_final):
                got.append(await anext(chunks))
            stopped = by_url[stream.server_url]
            os.kill(stopped.pid, signal.SIGSTOP)  # alive but silent
            stream.push_text("We open at nine tomorrow morning.")
            stream.flush()
            with pytest.raises(BackendError, match="no message for 1 s"):
                _ = [c async for c in chunks]
            nxt = await speak(remote, ["Anything else?"])
            assert [t for t, _ in nxt] == ["Anything else?"]
        finally:
            if stopped is not None:
                os.kill(stopped.pid, signal.SIGCONT)
            await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_busy_server_is_retried_elsewhere(farm) -> None:
    busy = farm.start(PIPER_TTS, {"max_streams": 1})
    other = farm.start(PIPER_TTS)
    try:

        async def main() -> None:
            holder = RemoteSynthesizer([busy.url])
            remote = RemoteSynthesizer([busy.url, other.url], health_interval_s=3600)
            try:
                remote.pool.bind()
                await asyncio.sleep(0.5)  # the first (and only) health poll: both servers idle
                held = holder.open_stream()
                held.push_text("Hello there, how are you today? ")
                await anext(aiter(held))  # the only slot on `busy` is taken
                stream = remote.open_stream()
                remote.pool.servers[1].open_streams += 5  # make `busy` the least loaded
                stream.push_text("Anything else?")
                stream.flush()
                assert [c.text async for c in stream][-1] == "Anything else?"
                assert stream.servers_tried == [busy.url, other.url]
                assert remote.pool.describe()[0]["healthy"]  # busy is not dead
                # the same over the sglang-omni route (HTTP 503 busy)
                sg = RemoteSynthesizer(
                    [busy.url, other.url],
                    protocol="sglang-omni",
                    engine_chunking="generic",
                    health_interval_s=3600,
                )
                try:
                    sg.pool.bind()
                    await asyncio.sleep(0.5)
                    sg.pool.servers[0].reported_streams = 0  # forget what the poll saw: `busy` looks idle
                    sg.pool.servers[1].open_streams += 5
                    refused = metric(busy.url, "tts_rejected_total", reason="busy")
                    stream = sg.open_stream()
                    stream.push_text("Anything else?")
                    stream.flush()
                    assert [c.text async for c in stream][-1] == "Anything else?"
                    assert metric(busy.url, "tts_rejected_total", reason="busy") == refused + 1
                    assert sg.pool.describe()[0]["healthy"]
                finally:
                    await sg.aclose()
                await held.cancel()
            finally:
                await holder.aclose()
                await remote.aclose()

        asyncio.run(main())
    finally:
        farm.stop(busy)
        farm.stop(other)


@pytest.mark.slow
def test_idle_connection_timed_out_by_the_server_is_replaced(farm) -> None:
    server = farm.start(PIPER_TTS, {"idle_timeout_s": 0.5})
    try:

        async def main() -> None:
            remote = RemoteSynthesizer([server.url], health_interval_s=3600)
            try:
                assert [t for t, _ in await speak(remote, ["Hello there."])] == ["Hello there."]
                assert len(remote.pool.servers[0].idle) == 1
                await asyncio.sleep(1.5)  # the server closes the idle connection
                assert [t for t, _ in await speak(remote, ["Anything else?"])] == ["Anything else?"]
                assert remote.pool.describe()[0]["healthy"]  # a stale connection is not a dead server
            finally:
                await remote.aclose()

        asyncio.run(main())
    finally:
        farm.stop(server)


@pytest.mark.slow
def test_draining_server_finishes_its_stream_and_new_ones_go_elsewhere(farm) -> None:
    draining = farm.start(PIPER_TTS, {"shutdown_grace_s": 20})
    other = farm.start(PIPER_TTS)
    try:

        async def main() -> None:
            holder = RemoteSynthesizer([draining.url])
            remote = RemoteSynthesizer([draining.url, other.url], health_interval_s=3600)
            try:
                remote.pool.bind()
                await asyncio.sleep(0.5)  # the first (and only) health poll: both ready
                held = holder.open_stream()
                held.push_text("Hello there, how are you today? ")
                chunks = aiter(held)
                await anext(chunks)
                os.kill(draining.pid, signal.SIGTERM)  # drain: no new streams, this one may finish
                await asyncio.sleep(0.3)
                for _ in range(2):
                    stream = remote.open_stream()
                    stream.push_text("Anything else?")
                    stream.flush()
                    assert [c.text async for c in stream][-1] == "Anything else?"
                    assert stream.server_url == other.url
                assert not remote.pool.describe()[0]["healthy"]
                held.push_text("Goodbye now.")
                held.flush()
                rest = [c.text async for c in chunks]
                assert rest[-1] == "Goodbye now." and held.state is StreamState.DONE
            finally:
                await holder.aclose()
                await remote.aclose()

        asyncio.run(main())
    finally:
        farm.stop(draining)
        farm.stop(other)
