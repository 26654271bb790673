"""Hostile input: malformed Twilio messages, deep JSON, slowloris, DNS rebinding, the auth banner."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from agent_runtime.commands.serve import banner_auth
from agent_runtime.json_limits import JSONTooDeep, exceeds_depth, loads
from agent_runtime.server.security import host_name
from agent_runtime.server.slowloris import body_length
from agent_runtime.transport.twilio import CLOSE_INVALID
from agent_runtime.transport.twilio_messages import Mark, Media, Start, TwilioProtocolError, parse_message
from tests.conftest import REPO_ROOT
from tests.server.conftest import running_server

SID = "MZ0123456789abcdef"
FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
SILENCE = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of mu-law silence


def _start(**start: object) -> str:
    body = {"callSid": "CA1", "streamSid": SID, "mediaFormat": FORMAT, "customParameters": {}, **start}
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": body})


def _event(event: str, **fields: object) -> str:
    return json.dumps({"event": event, "streamSid": SID, **fields})


def _deep(levels: int) -> str:
    return '{"event": "media", "media": {"payload": ""}, "x": ' + "[" * levels + "]" * levels + "}"


# (messages sent, the close reason expected): a known event with a wrong shape, before or after `start`
MALFORMED: list[tuple[list[str], str]] = [
    ([_start(mediaFormat=[1, 2])], "start.mediaFormat must be an object"),
    ([_start(mediaFormat={**FORMAT, "sampleRate": "eight thousand"})], "start.mediaFormat.sampleRate must be 8000"),
    ([_start(mediaFormat={**FORMAT, "sampleRate": 16000})], "start.mediaFormat.sampleRate must be 8000"),
    ([_start(mediaFormat={**FORMAT, "sampleRate": True})], "start.mediaFormat.sampleRate must be 8000"),
    ([_start(mediaFormat={**FORMAT, "encoding": "audio/l16"})], "start.mediaFormat.encoding must be 'audio/x-mulaw'"),
    ([_start(mediaFormat={**FORMAT, "channels": 2})], "start.mediaFormat.channels must be 1"),
    ([_start(customParameters={"token": {"nested": 1}})], "start.customParameters values must be strings"),
    ([_start(customParameters=["token"])], "start.customParameters must be an object"),
    ([_start(callSid=["CA1"])], "start.callSid must be a string"),
    ([json.dumps({"event": "start", "streamSid": SID, "start": "now"})], "start must be an object"),
    ([json.dumps({"event": "start", "start": {"streamSid": 42}})], "start.streamSid must be a non-empty string"),
    ([json.dumps({"event": "connected", "streamSid": 7})], "streamSid must be a string"),
    ([_start(), _event("mark", mark="a10")], "mark must be an object"),
    ([_start(), _event("mark", mark={"name": ["a10"]})], "mark.name must be a string"),
    ([_start(), _event("media", media="AAAA")], "media must be an object"),
    ([_start(), _event("media", media={"payload": 12})], "media.payload must be a base64 string"),
    ([_start(), _event("media", media={"payload": "!!not base64!!"})], "media.payload must be a base64 string"),
    ([_start(), _event("media", media={"payload": "\u00e9t\u00e9"})], "media.payload must be a base64 string"),
    ([_start(), _event("media")], "media must be an object"),
    ([_start(), _event("dtmf", dtmf={"digit": 1})], "dtmf.digit must be a string"),
    ([_start(), _event("stop", stop="now")], "stop must be an object"),
    ([_start(), _event("start", start={"mediaFormat": {"sampleRate": {}}})], "start.mediaFormat.sampleRate must be 8000"),
    ([_start(), "[1, 2, 3]"], "message must be a JSON object"),
    ([_deep(40)], "message too deeply nested (over 32 levels)"),
    ([_start(), _deep(30_000)], "message too deeply nested (over 32 levels)"),  # json.loads would recurse out
]


@pytest.fixture
def no_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if anything logged an ERROR (an unhandled exception, a traceback)."""
    caplog.set_level(logging.INFO)
    yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


# -- the message schema --------------------------------------------------------------------------------
@pytest.mark.parametrize(("messages", "reason"), MALFORMED)
def test_schema_names_what_is_wrong(messages: list[str], reason: str) -> None:
    *good, bad = messages
    for m in good:
        parse_message(m)
    with pytest.raises(TwilioProtocolError) as err:
        parse_message(bad)
    assert str(err.value) == reason


def test_schema_reads_what_twilio_sends() -> None:
    start = parse_message(_start(customParameters={"token": "s3cret"}))
    assert isinstance(start, Start)
    assert start.stream.stream_sid == SID and start.stream.call_sid == "CA1"
    assert start.stream.custom_parameters == {"token": "s3cret"}
    bare = parse_message(json.dumps({"event": "start", "start": {"streamSid": SID}}))  # format defaults to Twilio's
    assert isinstance(bare, Start) and bare.stream.media_format["sampleRate"] == 8000
    media = parse_message(_event("media", media={"track": "inbound", "chunk": "1", "payload": SILENCE}))
    assert isinstance(media, Media) and media.payload == b"\xff" * 160
    assert parse_message(_event("mark", mark={"name": "a10"})) == Mark("a10")
    assert parse_message(_event("dtmf", dtmf={"track": "inbound_track", "digit": "5"})).event == "dtmf"
    assert parse_message(_event("stop")).event == "stop"
    assert parse_message(_event("someday", someday=[{"x": 1}])).event == "someday"  # unknown: ignored
    assert parse_message(_deep(31)).event == "media"  # 32 levels is fine
    with pytest.raises(TwilioProtocolError, match="over 8 levels"):
        parse_message(_deep(31), max_depth=8)


def test_depth_scan_ignores_brackets_in_strings() -> None:
    assert not exceeds_depth(json.dumps({"a": "[[[[[[[[[[{{{{{{{{{{" * 10, "b": ['\\"[[[[']}), 3)
    assert exceeds_depth('{"a": [[[1]]]}', 3) and not exceeds_depth('{"a": [[1]]}', 3)
    assert exceeds_depth('"\\"" ' + "[" * 10, 5)  # an escaped quote does not end the string early
    assert loads(b'{"a": [1, {"b": "[[[["}]}', 3) == {"a": [1, {"b": "[[[["}]}
    with pytest.raises(JSONTooDeep, match="more than 4 levels"):
        loads("[" * 100_000 + "]" * 100_000, 4)
    with pytest.raises(JSONTooDeep):  # a limit above the interpreter's recursion limit: still no RecursionError
        loads("[" * 100_000 + "]" * 100_000, 1_000_000)


# -- the phone WebSocket ----------------------------------------------------------------------------------
def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/twilio"


async def _close_of(url: str, messages: list[str]) -> tuple[int | None, str]:
    """Send `messages` and read until the server closes: (close code, reason)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(_ws_url(url)) as ws:
        for m in messages:
            await ws.send_str(m)
        async with asyncio.timeout(5):
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    return msg.data, msg.extra or ""
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return ws.close_code, ""


@pytest.mark.slow
async def test_malformed_twilio_messages_close_with_1007_and_a_reason(no_errors) -> None:
    async with running_server({"header_timeout_s": 1.0}) as run, aiohttp.ClientSession() as http:
        for messages, reason in MALFORMED:
            code, said = await _close_of(run.url, messages)
            assert (code, said) == (CLOSE_INVALID, reason), messages[-1][:80]
        await run.wait_idle()
        async with http.get(f"{run.url}/healthz") as r:
            assert r.status == 200
        # a well-formed call still works, and lasts longer than the header timeout
        async with http.ws_connect(_ws_url(run.url)) as ws:
            await ws.send_str(_event("connected", protocol="Call", version="1.0.0"))
            await ws.send_str(_start(customParameters={"caller": "+15550100"}))
            for i in range(75):  # 1.5 s of silence, in real time
                await ws.send_str(_event("media", media={"track": "inbound", "chunk": str(i), "payload": SILENCE}))
                await ws.send_str(_event("dtmf", dtmf={"track": "inbound_track", "digit": "1"}))
                await asyncio.sleep(0.02)
            assert len(run.server.calls) == 1
            await ws.send_str(_event("stop", stop={"callSid": "CA1"}))
            async with asyncio.timeout(5):
                async for _ in ws:
                    pass
            assert ws.close_code == 1000
        await run.wait_idle()
        text = run.server.metrics.render()
        assert 'agent_sessions_total{transport="twilio"} 1' in text


# -- deep JSON on /offer ------------------------------------------------------------------------------------
async def test_deep_json_offer_is_a_400_not_a_500(no_errors) -> None:
    async with running_server() as run, aiohttp.ClientSession() as http:
        for levels in (33, 30_000):
            body = '{"type": "offer", "sdp": ' + "[" * levels + "]" * levels + "}"
            async with http.post(f"{run.url}/offer", data=body) as r:
                assert r.status == 400
                error = (await r.json())["error"]
                assert "too deeply nested" in error and "server.max_json_depth" in error, error
        body = '{"type": "offer", "sdp": ' + "[" * 31 + "]" * 31 + "}"  # 32 levels: parsed, then refused as SDP
        async with http.post(f"{run.url}/offer", data=body) as r:
            assert r.status == 400 and "malformed SDP" in (await r.json())["error"]
        async with http.get(f"{run.url}/healthz") as r:
            assert r.status == 200
        assert not run.server.calls


# -- slowloris ----------------------------------------------------------------------------------------------
async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closed the connection (reading and dropping anything it sent)."""
    t0 = time.monotonic()
    async with asyncio.timeout(limit):
        while await reader.read(4096):
            pass
    return time.monotonic() - t0


async def _trickle(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """One header byte every 0.2 s, never the blank line."""
    with contextlib.suppress(ConnectionError):
        while not stop.is_set():
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_slowloris_connections_are_closed_after_the_header_timeout() -> None:
    timeout = 1.0
    async with running_server({"header_timeout_s": timeout}) as run:
        port = int(run.url.rsplit(":", 1)[1])
        # connected and sent nothing
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert timeout * 0.9 <= await _closed_after(reader, 5 * timeout)
        writer.close()
        # a request line, then a header byte every 0.2 s, never the blank line
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        stop = asyncio.Event()
        trickle = asyncio.create_task(_trickle(writer, stop))
        assert timeout * 0.9 <= await _closed_after(reader, 5 * timeout)
        stop.set()
        await trickle
        writer.close()


@pytest.mark.slow
async def test_kept_alive_connections_and_slow_bodies_are_not_cut() -> None:
    timeout = 1.0
    async with running_server({"header_timeout_s": timeout}) as run:
        port = int(run.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(get)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(len(b'{"status": "ok"}'))
        await asyncio.sleep(timeout * 1.5)  # idle between requests: keep-alive, not the header timeout
        body = b'{"type": "offer", "sdp": "hello"}'
        writer.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        await asyncio.sleep(timeout * 1.5)  # a body that comes later is not a header
        writer.write(body + get)  # and a pipelined request after it
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 400"), head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert b"malformed SDP" in await reader.readexactly(length)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        await reader.readexactly(len(b'{"status": "ok"}'))
        # the next request on the same connection trickles its headers: cut
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        assert timeout * 0.9 <= await _closed_after(reader, 5 * timeout)
        writer.close()


def test_body_framing() -> None:
    assert body_length(b"GET / HTTP/1.1\r\nHost: x\r") == 0
    assert body_length(b"POST / HTTP/1.1\r\ncontent-length: 12\r") == 12
    assert body_length(b"GET /twilio HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r") is None
    assert body_length(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r") is None
    assert body_length(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r") is None
    assert body_length(b"POST / HTTP/1.1\r\nContent-Length: -1\r") is None
    assert body_length(b"CONNECT example.com:443 HTTP/1.1\r") is None


# -- Host header (DNS rebinding) ------------------------------------------------------------------------------
async def _status(url: str, host: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz", headers={"Host": host}) as r:
        return r.status, await r.text()


async def test_loopback_server_answers_only_loopback_names() -> None:
    async with running_server() as run:
        port = run.url.rsplit(":", 1)[1]
        for ok in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", "localhost."):
            assert (await _status(run.url, ok))[0] == 200, ok
        for evil in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "localhost.evil.example"):
            status, text = await _status(run.url, evil)
            assert status == 421 and "server.allowed_hosts" in json.loads(text)["error"], (evil, text)
        async with aiohttp.ClientSession() as http:  # the phone WebSocket and signaling too
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(_ws_url(run.url), headers={"Host": "evil.example"})
            assert err.value.status == 421
            async with http.post(f"{run.url}/offer", data=b"{}", headers={"Host": "evil.example"}) as r:
                assert r.status == 421
    async with running_server({"allowed_hosts": ["agent.example.com"]}) as run:
        assert (await _status(run.url, "agent.example.com:443"))[0] == 200
        assert (await _status(run.url, "localhost"))[0] == 200
        assert (await _status(run.url, "evil.example"))[0] == 421


async def test_public_bind_checks_hosts_only_when_configured() -> None:
    async with running_server({"auth": "off"}, host="0.0.0.0") as run:
        assert (await _status(run.url, "evil.example"))[0] == 200  # the operator's proxy decides
    async with running_server({"auth": "off", "allowed_hosts": ["agent.example.com"]}, host="0.0.0.0") as run:
        assert (await _status(run.url, "agent.example.com"))[0] == 200
        assert (await _status(run.url, "evil.example"))[0] == 421


def test_host_name() -> None:
    assert host_name("[::1]:8080") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("Example.COM.:80") == "example.com"
    assert host_name("127.0.0.1") == "127.0.0.1"


# -- the banner -----------------------------------------------------------------------------------------------
def test_banner_says_why_there_is_no_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert banner_auth(True, "0.0.0.0") == "bearer token required"
    assert banner_auth(False, "127.0.0.1") == "no auth (loopback)"
    assert banner_auth(False, "localhost") == "no auth (loopback)"
    assert not caplog.records
    assert banner_auth(False, "0.0.0.0") == "no auth: server.auth is off"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


@pytest.mark.slow
async def test_serve_on_a_public_address_without_auth_says_so(tmp_path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("server:\n  auth: off\n  loopback_only: true\n  header_timeout_s: 1.0\n  shutdown_grace_s: 0.5\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_runtime.cli", "serve", "--instant-engines", "--host", "0.0.0.0",
        "--port", "0", "--config", str(cfg), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "AGENT_RUNTIME_TOKEN"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "no auth: server.auth is off" in line and "loopback" not in line, line
        port = int(re.search(r"http://0\.0\.0\.0:(\d+)", line).group(1))
        # the process serves with the header deadline too
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        assert await _closed_after(reader, 5.0) < 5.0
        writer.close()
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0
        assert b"WARNING" in err and b"server.auth is off" in err and b"Traceback" not in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
