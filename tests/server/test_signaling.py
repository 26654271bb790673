"""WebRTC signaling: a real aiortc caller on loopback, bad input, auth, CORS, capacity, readiness."""

from __future__ import annotations

import asyncio
import logging
import threading

import aiohttp
import pytest

from agent_runtime.engine_set import Engines
from agent_runtime.errors import ConfigError
from agent_runtime.server.security import resolve_token
from agent_runtime.server.webrtc_client import WebRTCCaller
from tests.server.conftest import SENTENCE, make_engines, running_server


async def _post(url: str, data: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/offer", data=data, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


@pytest.mark.slow
async def test_call_hears_the_caller_and_answers(speech) -> None:
    engines = make_engines()
    async with running_server(engines=engines) as run:
        caller = WebRTCCaller()
        answer = await caller.call_http(run.url)
        assert answer["type"] == "answer" and "127.0.0.1" in answer["sdp"]
        assert " typ host" in answer["sdp"] and "srflx" not in answer["sdp"]
        await caller.wait_event(lambda e: e["kind"] == "session", 10)
        end = await caller.say(speech, 16_000)
        turn = await caller.wait_event(lambda e: e["kind"] == "turn", 10)
        assert turn["user_text"] == SENTENCE and turn["agent_text"]
        assert turn["voice_to_voice_ms"] is not None and turn["stages_ms"]["first_audio_out"] is not None
        # the session heard the whole sentence (the recognizer got about as much audio as was said)
        spoken = (len(speech) - 12_800) / 16_000
        heard = engines.recognizer.heard_seconds
        assert heard and abs(heard[0] - spoken) < 0.6, (heard, spoken)
        # agent audio came back to the caller, after the caller stopped talking
        await asyncio.sleep(0.5)
        # `end` is after the speech's 0.8 s silent tail: the agent may start inside it
        speech_end = end - 12_800 / 16_000
        first = caller.audio_after(speech_end)
        assert first is not None and first - speech_end < 2.0
        async with aiohttp.ClientSession() as http, http.get(f"{run.url}/metrics") as r:
            text = await r.text()
        assert "agent_turns_total 1" in text and 'agent_active_sessions{transport="webrtc"} 1' in text
        assert 'agent_turn_stage_latency_seconds_count{stage="first_audio_out"} 1' in text
        await caller.close()
        await run.wait_idle()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"sdp": "v=0", "type": "answer"}', '"type" must be "offer"'),
        (b'{"type": "offer"}', "malformed SDP"),
        (b'{"sdp": "hello", "type": "offer"}', "malformed SDP"),
        (b'{"sdp": "v=0\\r\\nm=video 9 UDP/TLS/RTP/SAVPF 96\\r\\n", "type": "offer"}', "no audio media section"),
        (b'{"sdp": "v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\na=garbage\\r\\n", "type": "offer"}', "malformed SDP"),
    ],
)
async def test_malformed_offers_get_400_with_a_clear_message(body: bytes, message: str) -> None:
    async with running_server() as run:
        status, data, _ = await _post(run.url, body, {"Content-Type": "application/json"})
        assert status == 400, data
        assert message in data["error"]
        assert not run.server.calls
        assert 'agent_errors_total{kind="bad_offer"} 1' in run.server.metrics.render()


async def test_body_size_limit() -> None:
    async with running_server({"max_body_bytes": 2048}) as run:
        status, data, _ = await _post(run.url, b'{"sdp": "' + b"x" * 5000 + b'", "type": "offer"}')
        assert status == 413 and "too large" in data["error"]


async def test_bearer_token_required_when_configured() -> None:
    async with running_server({"auth": "on"}, environ={"AGENT_RUNTIME_TOKEN": "s3cret"}) as run:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            status, data, hdrs = await _post(run.url, b"{}", headers)
            assert status == 401 and "bearer token" in data["error"]
            assert hdrs.get("WWW-Authenticate") == "Bearer"
        caller = WebRTCCaller()
        assert (await caller.call_http(run.url, token="s3cret"))["type"] == "answer"
        await caller.connected()
        await caller.close()
        await run.wait_idle()


def test_auth_defaults_on_for_non_loopback_hosts() -> None:
    from agent_runtime.config import ServerConfig

    cfg = ServerConfig()
    assert resolve_token(cfg, "127.0.0.1", {}) is None
    assert resolve_token(cfg, "localhost", {}) is None
    with pytest.raises(ConfigError, match="AGENT_RUNTIME_TOKEN"):
        resolve_token(cfg, "0.0.0.0", {})
    assert resolve_token(cfg, "0.0.0.0", {"AGENT_RUNTIME_TOKEN": "t"}) == "t"
    assert resolve_token(ServerConfig(auth="off"), "0.0.0.0", {}) is None
    with pytest.raises(ConfigError):
        resolve_token(ServerConfig(auth="on"), "127.0.0.1", {})


async def test_cors_only_for_configured_origins() -> None:
    async with running_server({"cors_origins": ["https://app.example.com"]}) as run:
        status, data, _ = await _post(run.url, b"{}", {"Origin": "https://evil.example.com"})
        assert status == 403 and "not allowed" in data["error"]
        async with aiohttp.ClientSession() as http:
            pre = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
            async with http.options(f"{run.url}/offer", headers=pre) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            async with http.get(f"{run.url}/healthz", headers={"Origin": "https://evil.example.com"}) as r:
                assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
        # the same origin (the served page) needs no CORS entry
        status, data, _ = await _post(run.url, b"[]", {"Origin": run.url})
        assert status == 400


async def test_busy_when_all_call_slots_are_taken() -> None:
    async with running_server({"max_sessions": 1}) as run:
        first = WebRTCCaller()
        await first.call_http(run.url)
        await first.connected()
        second = WebRTCCaller()
        status, data, headers = await _post(
            run.url, f'{{"sdp": {_json(await second.create_offer())}, "type": "offer"}}'
        )
        assert status == 503 and data["error"].startswith("busy") and headers["Retry-After"]
        async with aiohttp.ClientSession() as http, http.get(f"{run.url}/metrics") as r:
            assert 'agent_sessions_rejected_total{reason="busy"} 1' in await r.text()
        await first.close()
        await second.close()
        await run.wait_idle()


def _json(s: str) -> str:
    import json

    return json.dumps(s)


async def test_readiness_follows_engine_loading_and_drain() -> None:
    release = threading.Event()

    def slow_load():
        release.wait(10)
        return make_engines()

    async with running_server(load=slow_load) as run, aiohttp.ClientSession() as http:
        async with http.get(f"{run.url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{run.url}/readyz") as r:
            assert r.status == 503 and "loading" in (await r.json())["error"]
        status, data, _ = await _post(run.url, b"{}")
        assert status == 400  # bad input is reported before readiness
        release.set()
        async with asyncio.timeout(5):
            while run.server.engines is None:
                await asyncio.sleep(0.02)
        async with http.get(f"{run.url}/readyz") as r:
            assert r.status == 200
        caller = WebRTCCaller()
        await caller.call_http(run.url)
        await caller.connected()
        drain = asyncio.create_task(run.server.drain(0.5))
        await asyncio.sleep(0.1)
        async with http.get(f"{run.url}/readyz") as r:
            assert r.status == 503
        status, data, _ = await _post(run.url, f'{{"sdp": {_json(await WebRTCCaller().create_offer())}, "type": "offer"}}')
        assert status == 503 and "shutting down" in data["error"]
        await drain
        assert not run.server.calls  # the call was hung up after the grace period
        await caller.close()


@pytest.mark.parametrize("user_error", [True, False])
async def test_a_failed_engine_load_is_reported_and_the_server_stays_up(
    user_error: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A configuration or model error is one log line (no traceback) and /readyz names it; an
    unexpected error keeps its traceback. Either way /healthz answers and calls are refused."""
    from agent_runtime.errors import ModelLoadError

    def failing_load() -> Engines:
        if user_error:
            raise ModelLoadError("whisper model 'nosuch' not found")
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="agent_runtime.server"):
        async with running_server(load=failing_load) as run, aiohttp.ClientSession() as http:
            async with asyncio.timeout(5):
                while run.server.engine_error is None:
                    await asyncio.sleep(0.01)
            async with http.get(f"{run.url}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{run.url}/readyz") as r:
                error = (await r.json())["error"]
                assert r.status == 503 and ("nosuch" in error if user_error else "boom" in error)
    record = next(r for r in caplog.records if "loading the engines failed" in r.getMessage())
    assert (record.exc_info is None) == user_error
    if user_error:
        assert "nosuch" in record.getMessage()


def test_ice_servers_come_from_config_and_environment() -> None:
    from agent_runtime.config import load_config
    from agent_runtime.transport.webrtc import ice_servers_from_config

    cfg = load_config(None, {"server": {"ice_servers": [
        {"urls": ["stun:stun.example.com:3478"]},
        {"urls": ["turn:turn.example.com:3478"], "username_env": "TURN_USER", "credential_env": "TURN_PASS"},
    ]}})
    stun, turn = ice_servers_from_config(cfg.server.ice_servers, {"TURN_USER": "u", "TURN_PASS": "p"})
    assert stun.urls == ["stun:stun.example.com:3478"] and stun.username is None
    assert turn.urls == ["turn:turn.example.com:3478"] and (turn.username, turn.credential) == ("u", "p")


async def test_page_gets_the_configured_ice_servers() -> None:
    servers = [{"urls": ["turn:turn.example.com:3478"], "username_env": "TURN_USER", "credential_env": "TURN_PASS"}]
    environ = {"AGENT_RUNTIME_TOKEN": "s3cret", "TURN_USER": "u", "TURN_PASS": "p"}
    async with running_server({"auth": "on", "ice_servers": servers}, environ=environ) as run, aiohttp.ClientSession() as http:
        async with http.get(f"{run.url}/ice") as r:
            assert r.status == 401  # TURN credentials only with the token
        async with http.get(f"{run.url}/ice", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200
            assert await r.json() == {
                "iceServers": [{"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "p"}]
            }
