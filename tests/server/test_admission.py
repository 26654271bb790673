"""Admission under abuse: pending connections hold no call slot, and every call ends.

A real server on 127.0.0.1 with instant engines; real aiohttp WebSocket clients and aiortc peers.
Other client addresses are 127.0.0.2 and 127.0.0.3 (all of 127.0.0.0/8 is loopback on Linux), so
per-client limits can be told apart from the server's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from agent_runtime.server.admission import CallState
from agent_runtime.server.webrtc_client import WebRTCCaller
from agent_runtime.transport.twilio import CLOSE_POLICY, CLOSE_TRY_AGAIN
from tests.server.conftest import Running, running_server
from tests.server.test_twilio import SID, PhoneClient, _start, _ws_url

TOKEN = "tok"
AUTH = {"auth": "on"}
ENV = {"AGENT_RUNTIME_TOKEN": TOKEN}


@pytest.fixture(autouse=True)
def no_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test here may log an error (a traceback): abuse is handled, not crashed on."""
    caplog.set_level(logging.INFO)
    yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def _from(address: str) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from `address` (a loopback address)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def _closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> tuple[int | None, str]:
    """Wait until the server closes `ws`; its close code and reason."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return msg.data, msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return ws.close_code, ""


async def _offer(http: aiohttp.ClientSession, run: Running, sdp: str, token: str | None = None) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{run.url}/offer", json={"sdp": sdp, "type": "offer"}, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


async def _readyz(run: Running) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{run.url}/readyz") as r:
        assert r.status == 200
        return await r.json()


async def _metric(run: Running, line: str) -> bool:
    """Whether GET /metrics has this exact sample line."""
    async with aiohttp.ClientSession() as http, http.get(f"{run.url}/metrics") as r:
        return line in (await r.text()).splitlines()


async def _idle(run: Running, timeout: float = 10.0) -> None:
    """Every call ended and no connection is pending: the slots are back."""
    await run.wait_idle(timeout)
    async with asyncio.timeout(timeout):
        while run.server.admission.pending():
            await asyncio.sleep(0.02)
    assert await _readyz(run) == {"status": "ready", "sessions": 0, "pending": 0}


@pytest.mark.slow
async def test_idle_unauthenticated_phone_sockets_hold_no_call_slot() -> None:
    overrides = {**AUTH, "max_sessions": 2, "max_pending_per_client": 4, "setup_timeout_s": 3.0}
    async with running_server(overrides, environ=ENV) as run, aiohttp.ClientSession() as attacker:
        squatters = [await attacker.ws_connect(_ws_url(run.url)) for _ in range(4)]
        for _ in range(6):  # over the per-client limit: refused at once, before the upgrade
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await attacker.ws_connect(_ws_url(run.url))
            assert refused.value.status == 429
        assert not any(ws.closed for ws in squatters)  # the refusals did not wait for the setup timeout
        assert await _readyz(run) == {"status": "ready", "sessions": 0, "pending": 4}
        assert await _metric(run, 'agent_sessions_rejected_total{reason="per_client"} 6')
        assert await _metric(run, 'agent_pending_connections{transport="twilio"} 4')

        # legitimate callers from elsewhere get both call slots while the squatters wait
        caller = WebRTCCaller()
        async with _from("127.0.0.2") as http:
            status, answer, _ = await _offer(http, run, await caller.create_offer(), TOKEN)
        assert status == 200, answer
        await caller.accept_answer(answer["sdp"])
        await caller.connected()
        async with _from("127.0.0.3") as http, http.ws_connect(_ws_url(run.url)) as ws:
            phone = PhoneClient(ws)
            await phone.hello({"token": TOKEN})
            async with asyncio.timeout(5):
                while len(run.server.calls) < 2:
                    await asyncio.sleep(0.02)
            assert {c.kind for c in run.server.calls.values()} == {"webrtc", "twilio"}
            await phone.stop()
        await caller.close()

        # the squatters never sent a `start`: each is closed with a reason, and counted
        for ws in squatters:
            code, reason = await _closed(ws)
            assert code == CLOSE_POLICY and "no valid 'start' within 3 s" in reason
        await _idle(run)
        assert await _metric(run, 'agent_sessions_rejected_total{reason="setup_timeout"} 4')
        assert await _metric(run, 'agent_pending_connections{transport="twilio"} 0')


async def test_socket_without_a_valid_start_is_closed_after_setup_timeout() -> None:
    async with running_server({"setup_timeout_s": 0.5}) as run, aiohttp.ClientSession() as http:
        silent = await http.ws_connect(_ws_url(run.url))
        chatty = await http.ws_connect(_ws_url(run.url))
        await chatty.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        assert run.server.admission.pending(kind="twilio") == 2 and not run.server.calls
        for ws in (silent, chatty):
            code, reason = await _closed(ws)
            assert code == CLOSE_POLICY and "no valid 'start' within 0.5 s" in reason
            await ws.close()
        await _idle(run)
        assert await _metric(run, 'agent_sessions_rejected_total{reason="setup_timeout"} 2')


@pytest.mark.slow
async def test_phone_stream_that_starts_and_sends_no_media_is_hung_up() -> None:
    async with running_server({"media_timeout_s": 1.0}) as run, aiohttp.ClientSession() as http:
        async with http.ws_connect(_ws_url(run.url)) as ws:
            await ws.send_str(_start())
            async with asyncio.timeout(5):
                while not run.server.calls:
                    await asyncio.sleep(0.02)
            assert next(iter(run.server.calls.values())).state is CallState.ACTIVE
            # other events are not caller audio: they do not keep the call alive
            await ws.send_str(json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "1"}}))
            code, reason = await _closed(ws)
        assert code == CLOSE_POLICY and "no caller audio for 1 s" in reason
        await _idle(run)
        assert await _metric(run, 'agent_calls_reclaimed_total{reason="media_timeout"} 1')
        assert await _metric(run, 'agent_sessions_total{transport="twilio"} 1')


async def test_webrtc_offer_whose_peer_never_connects_frees_its_slot() -> None:
    async with running_server({"setup_timeout_s": 0.5, "max_sessions": 1}) as run, aiohttp.ClientSession() as http:
        ghost = WebRTCCaller()
        status, answer, _ = await _offer(http, run, await ghost.create_offer())
        assert status == 200, answer  # the answer is never applied: no ICE, no DTLS
        assert await _readyz(run) == {"status": "ready", "sessions": 1, "pending": 1}
        await _idle(run, 10)
        assert await _metric(run, 'agent_calls_reclaimed_total{reason="setup_timeout"} 1')
        await ghost.close()
        # the slot is back: a real caller gets it
        caller = WebRTCCaller()
        await caller.call_http(run.url)
        await caller.connected()
        async with asyncio.timeout(5):
            while not run.server.calls or next(iter(run.server.calls.values())).state is not CallState.ACTIVE:
                await asyncio.sleep(0.02)
        await caller.close()
        await _idle(run)


@pytest.mark.slow
async def test_webrtc_peer_that_connects_and_sends_no_audio_is_hung_up() -> None:
    async with running_server({"media_timeout_s": 1.0, "setup_timeout_s": 5.0}) as run, aiohttp.ClientSession() as http:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="recvonly")  # listens, never sends a packet
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        status, answer, _ = await _offer(http, run, pc.localDescription.sdp)
        assert status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        async with asyncio.timeout(10):
            while pc.connectionState != "connected":
                await asyncio.sleep(0.02)
        call = run.server.calls[answer["session_id"]]
        async with asyncio.timeout(5):
            while call.state is not CallState.ACTIVE:
                await asyncio.sleep(0.02)
        await _idle(run, 10)
        assert call.state is CallState.ENDED
        assert await _metric(run, 'agent_calls_reclaimed_total{reason="media_timeout"} 1')
        assert await _metric(run, 'agent_calls_reclaimed_total{reason="setup_timeout"} 0')
        await pc.close()


@pytest.mark.slow
async def test_per_client_pending_offers_get_429() -> None:
    async with running_server({"max_pending_per_client": 2, "setup_timeout_s": 2.0}) as run:
        ghosts = [WebRTCCaller() for _ in range(4)]
        async with aiohttp.ClientSession() as http:
            for ghost in ghosts[:2]:
                assert (await _offer(http, run, await ghost.create_offer()))[0] == 200
            status, data, headers = await _offer(http, run, await ghosts[2].create_offer())
        assert status == 429 and "too many calls being set up from 127.0.0.1" in data["error"]
        assert "server.max_pending_per_client" in data["error"] and headers["Retry-After"] == "2"
        async with _from("127.0.0.2") as http:  # another client is not affected
            assert (await _offer(http, run, await ghosts[3].create_offer()))[0] == 200
        assert await _metric(run, 'agent_sessions_rejected_total{reason="per_client"} 1')
        await _idle(run, 10)  # none connected: all three slots come back after the setup timeout
        assert await _metric(run, 'agent_calls_reclaimed_total{reason="setup_timeout"} 3')
        for ghost in ghosts:
            await ghost.close()


async def test_per_client_call_limit_answers_429_and_1013() -> None:
    async with running_server({"max_calls_per_client": 1, "setup_timeout_s": 5.0}) as run:
        async with aiohttp.ClientSession() as http:
            early = await http.ws_connect(_ws_url(run.url))  # pending: holds no slot yet
            first = WebRTCCaller()
            await first.call_http(run.url)
            await first.connected()
            second = WebRTCCaller()
            status, data, headers = await _offer(http, run, await second.create_offer())
            assert status == 429 and "too many calls from 127.0.0.1" in data["error"] and headers["Retry-After"]
            # the pending phone socket starts while this client already holds its one call
            await early.send_str(_start())
            code, reason = await _closed(early)
            assert code == CLOSE_TRY_AGAIN and "server.max_calls_per_client" in reason
            await early.close()
            async with asyncio.timeout(5):
                while run.server.admission.pending():
                    await asyncio.sleep(0.02)
            async with _from("127.0.0.2") as other:  # other clients still get in
                caller = WebRTCCaller()
                status, answer, _ = await _offer(other, run, await caller.create_offer())
                assert status == 200, answer
                await caller.accept_answer(answer["sdp"])
                await caller.connected()
        assert len(run.server.calls) == 2
        assert await _metric(run, 'agent_sessions_rejected_total{reason="per_client"} 2')
        for c in (first, second, caller):
            await c.close()
        await _idle(run)


async def test_busy_at_start_closes_with_1013() -> None:
    async with running_server({"max_sessions": 1}) as run, aiohttp.ClientSession() as http:
        waiting = await http.ws_connect(_ws_url(run.url))  # connected while a slot was free
        async with http.ws_connect(_ws_url(run.url)) as ws:
            phone = PhoneClient(ws)
            await phone.hello()
            async with asyncio.timeout(5):
                while not run.server.calls:
                    await asyncio.sleep(0.02)
            await waiting.send_str(_start())
            code, reason = await _closed(waiting)
            assert code == CLOSE_TRY_AGAIN and reason.startswith("busy: all 1 call slots are in use")
            await waiting.close()
            async with asyncio.timeout(5):  # counted once the server's close handshake is done
                while not await _metric(run, 'agent_sessions_rejected_total{reason="busy"} 1'):
                    await asyncio.sleep(0.02)
            await phone.stop()
        await _idle(run)


async def test_wrong_token_in_start_is_refused_and_counted() -> None:
    async with running_server(AUTH, environ=ENV) as run, aiohttp.ClientSession() as http:
        async with http.ws_connect(_ws_url(run.url)) as ws:
            await ws.send_str(_start({"token": "wrong"}))
            code, reason = await _closed(ws)
        assert code == CLOSE_POLICY and reason.startswith("unauthorized")
        async with http.post(f"{run.url}/offer", json={}) as r:
            assert r.status == 401
        assert await _metric(run, 'agent_sessions_rejected_total{reason="unauthorized"} 2')
        await _idle(run)


async def test_phone_peer_that_stops_answering_pings_is_hung_up() -> None:
    async with running_server({"keepalive_s": 0.4, "media_timeout_s": 30.0}) as run, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(_ws_url(run.url), autoping=False)  # never answers a ping
        await ws.send_str(_start())
        async with asyncio.timeout(5):
            while not run.server.calls:
                await asyncio.sleep(0.02)
        await _idle(run, 10)  # well before the 30 s media timeout
        assert await _metric(run, 'agent_calls_reclaimed_total{reason="keepalive"} 1')
        await ws.close()


def test_call_states_change_only_along_the_lifecycle() -> None:
    from agent_runtime.server.admission import Admission

    adm = Admission(max_sessions=2, max_pending_per_client=2, max_calls_per_client=1)
    a = adm.open("twilio", "10.0.0.1")
    b = adm.open("webrtc", "10.0.0.1")
    assert adm.pending("10.0.0.1") == 2 and not adm.calls()
    refusal = adm.refuse_pending("10.0.0.1")
    assert refusal is not None and refusal.reason == "per_client"
    assert adm.refuse_pending("10.0.0.2") is None
    assert adm.admit(a) is None and a.state is CallState.ADMITTED and list(adm.calls()) == [a.call_id]
    refusal = adm.admit(b)  # one call per client
    assert refusal is not None and refusal.reason == "per_client" and b.state is CallState.PENDING
    with pytest.raises(RuntimeError, match="pending -> active"):
        adm.move(b, CallState.ACTIVE)
    assert adm.move(a, CallState.ACTIVE) and adm.pending() == 1
    c = adm.open("webrtc", "10.0.0.2")
    assert adm.admit(c) is None and adm.full
    refusal = adm.admit(adm.open("webrtc", "10.0.0.3"))
    assert refusal is not None and refusal.reason == "busy"
    assert adm.move(a, CallState.ENDED) and not adm.move(a, CallState.ENDED)
    with pytest.raises(RuntimeError):
        adm.move(a, CallState.ACTIVE)
    assert not adm.full and a.call_id not in adm.calls()


async def test_behind_a_trusted_proxy_limits_count_the_forwarded_client() -> None:
    overrides = {"trusted_proxies": ["127.0.0.1"], "max_pending_per_client": 1, "setup_timeout_s": 3.0}
    async with running_server(overrides) as run, aiohttp.ClientSession() as http:
        def via_proxy(client: str) -> dict[str, str]:
            return {"X-Forwarded-For": f"203.0.113.9, {client}"}  # a spoofed hop, then what the proxy saw

        first = await http.ws_connect(_ws_url(run.url), headers=via_proxy("198.51.100.1"))
        other = await http.ws_connect(_ws_url(run.url), headers=via_proxy("198.51.100.2"))  # another caller
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(_ws_url(run.url), headers=via_proxy("198.51.100.1"))
        assert refused.value.status == 429
        assert sorted(c.client for c in run.server.admission.connections()) == ["198.51.100.1", "198.51.100.2"]
        for ws in (first, other):
            await ws.close()
        await _idle(run)
    async with running_server({"max_pending_per_client": 1}) as run, aiohttp.ClientSession() as http:
        # no trusted proxy: the header is the caller's own word, and ignored
        ws = await http.ws_connect(_ws_url(run.url), headers={"X-Forwarded-For": "198.51.100.1"})
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(_ws_url(run.url), headers={"X-Forwarded-For": "198.51.100.2"})
        await ws.close()
        await _idle(run)


def test_trusted_proxies_must_be_addresses() -> None:
    from agent_runtime.errors import ConfigError
    from agent_runtime.server.clients import ClientAddresses

    assert ClientAddresses(["10.0.0.0/8", "::1"]).trusted("10.1.2.3")
    with pytest.raises(ConfigError, match=r"'proxy\.local' is not an IP address"):
        ClientAddresses(["proxy.local"])
