"""The Twilio Media Streams WebSocket, driven by a local client speaking that protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import numpy as np
import pytest

from agent_runtime.audio import mulaw
from agent_runtime.audio.resample import resample
from agent_runtime.transport.twilio import CLOSE_INVALID, CLOSE_POLICY
from tests.server.conftest import LONG_REPLY, make_engines, running_server

SID = "MZ0123456789abcdef"


def _start(params: dict[str, str] | None = None) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": SID,
        "start": {
            "accountSid": "AC1", "callSid": "CA1", "streamSid": SID, "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params or {},
        },
    })


class PhoneClient:
    """Plays the Twilio side: sends caller audio in real time, collects what the server sends."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[tuple[float, dict]] = []
        self.seq = 1
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.messages.append((time.monotonic(), json.loads(msg.data)))

    async def hello(self, params: dict[str, str] | None = None) -> None:
        await self.ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self.ws.send_str(_start(params))

    async def say(self, pcm16k: np.ndarray) -> None:
        audio = resample(pcm16k, 16_000, 8_000)
        t0 = time.monotonic()
        for i, k in enumerate(range(0, len(audio), 160)):
            self.seq += 1
            payload = base64.b64encode(mulaw.encode(audio[k : k + 160])).decode()
            await self.ws.send_str(json.dumps({
                "event": "media", "sequenceNumber": str(self.seq), "streamSid": SID,
                "media": {"track": "inbound", "chunk": str(i), "timestamp": str(i * 20), "payload": payload},
            }))
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))

    def of(self, event: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.messages if m["event"] == event]

    async def wait_for(self, event: str, timeout: float) -> tuple[float, dict]:
        async with asyncio.timeout(timeout):
            while not self.of(event):
                await asyncio.sleep(0.02)
        return self.of(event)[0]

    async def stop(self) -> None:
        await self.ws.send_str(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA1"}}))
        await self._reader


def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/twilio"


@pytest.mark.slow
async def test_phone_call_media_marks_and_clear_on_barge_in(speech) -> None:
    engines = make_engines(LONG_REPLY)
    async with running_server(engines=engines) as run, aiohttp.ClientSession() as http:
        async with http.ws_connect(_ws_url(run.url)) as ws:
            phone = PhoneClient(ws)
            await phone.hello()
            await phone.say(speech)
            t_media, first = await phone.wait_for("media", 10)
            assert first["streamSid"] == SID
            pcm = mulaw.decode(base64.b64decode(first["media"]["payload"]))
            assert len(pcm) == 160  # 20 ms at 8 kHz
            # the session heard the sentence through mu-law at 8 kHz
            heard = engines.recognizer.heard_seconds
            assert heard and abs(heard[0] - (len(speech) - 12_800) / 16_000) < 0.6
            # audio is paced in real time: after 1 s, about 1 s of audio was sent, not the whole reply
            await asyncio.sleep(1.2)
            sent = len([t for t, _ in phone.of("media") if t < t_media + 1.0])
            assert 30 <= sent <= 56, sent  # never faster than real time (a loaded loop may lag)
            played = [m for _, m in phone.of("media")]
            assert max(np.abs(mulaw.decode(base64.b64decode(m["media"]["payload"]))).max() for m in played) > 1000
            # marks track playback: echo them back as Twilio does once the audio has played
            marks = phone.of("mark")
            assert marks and all(m["streamSid"] == SID for _, m in marks)
            for _, m in marks:
                await ws.send_str(json.dumps({"event": "mark", "streamSid": SID, "mark": m["mark"]}))
            # the caller talks over the agent: the server sends `clear` and stops sending audio
            await phone.say(speech)
            t_clear, clear = await phone.wait_for("clear", 5)
            assert clear == {"event": "clear", "streamSid": SID}
            call = next(iter(run.server.calls.values()))
            assert call.transport.samples_played > 0
            after = [t for t, m in phone.of("media") if t > t_clear + 0.1]
            first_after = min(after) if after else None
            # nothing more of the interrupted reply (a new reply may start after the new turn)
            async with asyncio.timeout(2):  # the turn is filed just after `clear` goes out
                while not call.session.metrics.turns:
                    await asyncio.sleep(0.01)
            assert call.session.metrics.turns[0].interrupted
            assert first_after is None or first_after > t_clear + 0.25
            await phone.stop()
        await run.wait_idle()
        async with http.get(f"{run.url}/metrics") as r:
            text = await r.text()
        assert "agent_barge_ins_total 1" in text and 'agent_sessions_total{transport="twilio"} 1' in text


async def _closed_with(run, messages: list[str | bytes]) -> int | None:
    async with aiohttp.ClientSession() as http, http.ws_connect(_ws_url(run.url)) as ws:
        for m in messages:
            if isinstance(m, bytes):
                await ws.send_bytes(m)
            else:
                await ws.send_str(m)
        async with asyncio.timeout(5):
            async for _ in ws:
                pass
        return ws.close_code


async def test_garbage_closes_the_socket_cleanly(speech) -> None:
    media_bad = json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "!!not base64!!"}})
    async with running_server() as run:
        assert await _closed_with(run, ["this is not json"]) == CLOSE_INVALID
        assert await _closed_with(run, [b"\x00\x01binary"]) == CLOSE_INVALID
        assert await _closed_with(run, ['{"no_event": 1}']) == CLOSE_INVALID
        assert await _closed_with(run, ['{"event": "media"}']) == CLOSE_INVALID  # media before start
        assert await _closed_with(run, ['{"event": "start", "start": {}}']) == CLOSE_INVALID  # no streamSid
        assert await _closed_with(run, [_start(), media_bad]) == CLOSE_INVALID
        assert await _closed_with(run, [_start(), "[1, 2, 3]"]) == CLOSE_INVALID  # mid-call
        assert await _closed_with(run, [_start(), "x" * 70_000]) == 1009  # over server.max_body_bytes
        await run.wait_idle()
        assert not run.server.calls
        text = run.server.metrics.render()
        assert 'agent_errors_total{kind="bad_stream"} 7' in text


async def test_phone_stream_auth_by_custom_parameter() -> None:
    async with running_server({"auth": "on"}, environ={"AGENT_RUNTIME_TOKEN": "tok"}) as run:
        assert await _closed_with(run, [_start({"token": "wrong"})]) == CLOSE_POLICY
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(_ws_url(run.url)) as ws:
                phone = PhoneClient(ws)
                await phone.hello({"token": "tok"})
                await asyncio.sleep(0.3)
                assert len(run.server.calls) == 1
                await phone.stop()
            async with http.get(_ws_url(run.url).replace("ws://", "http://"),
                                headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
        await run.wait_idle()


async def test_phone_busy_is_refused_before_upgrade() -> None:
    async with running_server({"max_sessions": 1}) as run, aiohttp.ClientSession() as http:
        async with http.ws_connect(_ws_url(run.url)) as ws:
            phone = PhoneClient(ws)
            await phone.hello()
            await asyncio.sleep(0.2)
            async with http.get(_ws_url(run.url).replace("ws://", "http://"),
                                headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                         "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                assert r.status == 503 and "busy" in (await r.json())["error"]
            await phone.stop()
        await run.wait_idle()


def test_engines_are_instant() -> None:
    assert make_engines().llm.reply
