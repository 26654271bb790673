"""One reply spoken by an sglang-omni server (or `tts-serve`'s compatible route), segment by segment.

The client cuts the text (`RemoteSynthesizer`'s chunker: S2-Pro's or the generic one) and each
segment is one `POST /v1/audio/speech` with `stream: true` and `response_format: "wav"`, carrying
the voice, references and sampling fields. The answer is server-sent events::

    data: {"object": "audio.speech.chunk", "audio": {"data": <base64 WAV>, "sample_rate": ...}, "finish_reason": null}
    ...
    data: {"object": "audio.speech.chunk", "audio": null, "finish_reason": "stop"}
    data: [DONE]

(an error mid-stream is an event with `"finish_reason": "error"` and `"error": {"message": ...}`).
Every chunk's WAV is decoded to int16. All segments of an utterance go to one server (picked at
the first segment; if that one fails before any audio, another is tried, up to `retries`).
`cancel()` closes the HTTP response, which stops the server's generation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from agent_runtime.audio.frame import float_to_pcm16, pcm16_to_float
from agent_runtime.audio.resample import resample
from agent_runtime.errors import BackendError
from agent_runtime.tts.base import AsyncUtteranceSynth
from agent_runtime.tts.remote.pool import Server
from agent_runtime.tts.remote.wire import decode_wav
from agent_runtime.tts_service.protocol import SPEECH_PATH, SSE_CHUNK_OBJECT, SSE_DONE

if TYPE_CHECKING:
    from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer

log = logging.getLogger("agent_runtime.tts.remote")


class _Retry(Exception):
    def __init__(self, reason: str, mark_down: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mark_down = mark_down


class SglangUtterance(AsyncUtteranceSynth):
    """One reply's segments, each a streaming `POST /v1/audio/speech` to the same server."""

    def __init__(self, synth: RemoteSynthesizer, fields: dict[str, Any]) -> None:
        self._synth = synth
        self._fields = fields
        self.server: Server | None = None
        self._counted = False
        self._got_audio = False
        self._tried: set[str] = set()
        self._failures: list[str] = []
        self._cancelled = False
        self._response: aiohttp.ClientResponse | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned_rate = False
        self._segment_audio = False  # audio came for the segment being spoken

    @property
    def server_url(self) -> str | None:
        return None if self.server is None else self.server.url

    # -- async path (the runtime's) -----------------------------------------------------------
    async def synthesize_async(self, text: str) -> AsyncIterator[np.ndarray]:
        pool = self._synth.pool
        session = pool.bind()
        self._loop = asyncio.get_running_loop()
        while not self._cancelled:
            if self.server is None:
                server = pool.pick(self._tried)
                if server is None:
                    raise BackendError(self._no_server())
                self._tried.add(server.url)
                self.server = server
                server.open_streams += 1
                self._counted = True
            server = self.server
            try:
                async for block in self._request(session, server, text):
                    yield block
                return
            except _Retry as exc:
                self._failures.append(f"{server.url}: {exc.reason}")
                if exc.mark_down:
                    pool.mark_down(server, exc.reason)
                if self._got_audio:  # the utterance sticks to its server once it spoke
                    raise BackendError(f"speech server {server.url} failed mid-reply: {exc.reason}") from None
                self._release_server()
                if len(self._tried) > self._synth.retries:
                    raise BackendError(self._no_server()) from None
                log.info(
                    "remote TTS: %s failed before audio (%s); trying another server", server.url, exc.reason
                )

    async def _request(
        self, session: aiohttp.ClientSession, server: Server, text: str
    ) -> AsyncIterator[np.ndarray]:
        synth = self._synth
        body = {"input": text, "stream": True, "response_format": "wav", **self._fields}
        try:
            async with asyncio.timeout(synth.connect_timeout_s):
                response = await session.post(server.url + SPEECH_PATH, json=body, headers=synth.pool.headers)
        except TimeoutError:
            raise _Retry(f"no response within {synth.connect_timeout_s:g} s", mark_down=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retry(str(exc) or type(exc).__name__, mark_down=True) from None
        self._response = response
        try:
            if response.status != 200:
                message = await _error_message(response)
                if response.status in (429, 503):  # busy or draining: another server may take it
                    draining = "shutting down" in message.lower()  # busy is no reason to skip a server
                    raise _Retry(f"HTTP {response.status}: {message}", mark_down=draining)
                raise BackendError(f"speech server {server.url}: HTTP {response.status}: {message}")
            self._segment_audio = False
            async for event in self._events(server, response):
                if event == SSE_DONE:
                    return
                try:
                    obj = json.loads(event)
                except ValueError:
                    raise _Retry(f"malformed event {event[:80]!r}", mark_down=True) from None
                if not isinstance(obj, dict):
                    continue
                if obj.get("finish_reason") == "error" or obj.get("error"):
                    err = obj.get("error") or {}
                    message = err.get("message") if isinstance(err, dict) else str(err)
                    raise BackendError(f"speech server {server.url}: {message or 'generation failed'}")
                if obj.get("object") not in (None, SSE_CHUNK_OBJECT):
                    continue
                audio = obj.get("audio")
                if isinstance(audio, dict) and audio.get("data"):
                    pcm = self._decode(server, audio)
                    self._segment_audio = True
                    self._got_audio = True
                    if len(pcm):
                        yield pcm
            if not self._cancelled:
                raise _Retry("the event stream ended without [DONE]", mark_down=True)
        except aiohttp.ClientPayloadError as exc:
            if self._cancelled:
                return
            raise _Retry(f"response cut off ({exc})", mark_down=True) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            if self._cancelled:
                return
            raise _Retry(f"connection error ({exc})", mark_down=True) from None
        finally:
            self._response = None
            response.close()

    async def _events(self, server: Server, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
        """`data:` payloads of the event stream, one per event, under the read timeouts."""
        synth = self._synth
        data: list[str] = []
        quiet_since = time.monotonic()
        while not self._cancelled:
            limit = synth.read_timeout_s if self._segment_audio else synth.first_audio_timeout_s
            try:
                async with asyncio.timeout(limit):
                    raw = await response.content.readline()
            except TimeoutError:
                quiet_s = time.monotonic() - quiet_since
                if quiet_s >= synth.stall_timeout_s:  # answers, but never gets to this request
                    raise _Retry(f"no data for {quiet_s:.1f} s (stall_timeout_s)", mark_down=False) from None
                if await synth.pool.alive(server):
                    continue  # overloaded, not dead: keep waiting
                raise _Retry(f"no data for {limit:g} s, and it does not answer", mark_down=True) from None
            quiet_since = time.monotonic()
            server.last_alive = quiet_since
            if not raw:
                if data:
                    yield "\n".join(data)
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
                continue
            if line.startswith(":"):
                continue
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])

    def _decode(self, server: Server, audio: dict[str, Any]) -> np.ndarray:
        try:
            pcm, rate = decode_wav(base64.b64decode(audio["data"]))
        except ValueError as exc:
            raise BackendError(f"speech server {server.url}: undecodable audio chunk ({exc})") from None
        want = self._synth.sample_rate
        if rate != want:
            if not self._warned_rate:
                self._warned_rate = True
                log.warning("speech server %s speaks at %d Hz; resampling to %d Hz", server.url, rate, want)
            pcm = float_to_pcm16(resample(pcm16_to_float(pcm), rate, want))
        return pcm

    def _no_server(self) -> str:
        if self._failures:
            return "no speech server could take the utterance (" + "; ".join(self._failures) + ")"
        return "no speech server available (" + ", ".join(s.url for s in self._synth.pool.servers) + ")"

    def _release_server(self) -> None:
        if self.server is not None and self._counted:
            self.server.open_streams -= 1
        self._counted = False
        self.server = None

    # -- control ------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop: the response in flight is closed (from any thread)."""
        self._cancelled = True
        response, loop = self._response, self._loop
        if response is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            response.close()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(response.close)

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._release_server)
        else:
            self._release_server()

    # -- blocking path (tools, tests) -----------------------------------------------------------
    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Blocking form: one request on a private loop and session (never the runtime's loop)."""

        async def collect() -> list[np.ndarray]:
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                pool = self._synth.pool
                server = self.server or pool.pick()
                if server is None:
                    raise BackendError(self._no_server())
                self.server = server
                try:
                    return [b async for b in self._request(session, server, text)]
                except _Retry as exc:
                    raise BackendError(f"speech server {server.url}: {exc.reason}") from None
                finally:
                    log.debug("sglang segment in %.2fs", time.monotonic() - started)

        yield from asyncio.run(collect())


async def _error_message(response: aiohttp.ClientResponse) -> str:
    """The server's message from an error answer (OpenAI-style `error.message`, `detail`, or text)."""
    try:
        text = (await response.text())[:2000]
    except Exception:  # best effort
        return response.reason or ""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or (response.reason or "")
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("detail"):
            return str(body["detail"])
        if body.get("message"):
            return str(body["message"])
    return text.strip()
