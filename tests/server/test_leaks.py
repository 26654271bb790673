"""Callers who hang up mid-reply: every task and thread of their sessions ends."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading

import aiohttp
import pytest

from agent_runtime.server.webrtc_client import WebRTCCaller
from tests.server.conftest import LONG_REPLY, Running, make_engines, running_server
from tests.server.test_twilio import PhoneClient, _ws_url


async def _webrtc_hang_up_mid_reply(run: Running, speech) -> None:
    caller = WebRTCCaller()
    await caller.call_http(run.url)
    await caller.connected()
    end = await caller.say(speech, 16_000)
    async with asyncio.timeout(10):
        while caller.audio_after(end) is None:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # the agent is talking
    await caller.close()


async def _phone_hang_up_mid_reply(run: Running, speech) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(_ws_url(run.url)) as ws:
        phone = PhoneClient(ws)
        await phone.hello()
        await phone.say(speech)
        await phone.wait_for("media", 10)
        await asyncio.sleep(0.2)
    # leaving the block closes the socket without a `stop`: the line dropped


async def _batch(run: Running, speech) -> None:
    await asyncio.gather(
        _webrtc_hang_up_mid_reply(run, speech),
        _webrtc_hang_up_mid_reply(run, speech),
        _phone_hang_up_mid_reply(run, speech),
    )
    await run.wait_idle(15)


def _threads() -> tuple[list[str], int]:
    names = sorted(t.name for t in threading.enumerate())
    pool = [n for n in names if n.startswith(("asyncio_", "ThreadPoolExecutor"))]
    return [n for n in names if n not in pool], len(pool)


async def _settle(before_tasks: int) -> None:
    async with asyncio.timeout(10):
        while len(asyncio.all_tasks()) > before_tasks:
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_hang_ups_mid_reply_leak_no_tasks_or_threads(speech) -> None:
    async with running_server({"max_sessions": 4}, engines=make_engines(LONG_REPLY)) as run:
        await _batch(run, speech)  # warm-up: lazy imports, the default thread pool
        await asyncio.sleep(0.5)
        gc.collect()
        tasks_before = {t.get_name() for t in asyncio.all_tasks()}
        threads_before, pool_before = _threads()
        for _ in range(3):
            await _batch(run, speech)
        assert not run.server.calls
        with contextlib.suppress(TimeoutError):
            await _settle(len(tasks_before))
        for _ in range(50):  # aiortc's per-receiver decoder threads exit shortly after a hang-up
            gc.collect()
            threads_after, pool_after = _threads()
            if threads_after == threads_before:
                break
            await asyncio.sleep(0.1)
        tasks_after = {t.get_name() for t in asyncio.all_tasks()}
        assert len(tasks_after) <= len(tasks_before), sorted(tasks_after - tasks_before)
        assert threads_after == threads_before
        assert pool_after <= max(pool_before, 6)  # the loop's shared executor is bounded, not per call
        async with aiohttp.ClientSession() as http, http.get(f"{run.url}/metrics") as r:
            text = await r.text()
        assert 'agent_sessions_total{transport="webrtc"} 8' in text
        assert 'agent_sessions_total{transport="twilio"} 4' in text
        assert 'agent_active_sessions{transport="webrtc"} 0' in text
