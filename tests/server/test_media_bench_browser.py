"""The browser page measures voice to voice at the caller's ear and shows it next to the server's.

Headless Chromium plays a WAV as its microphone; the server answers with instant engines (a tone).
Skipped when Debian's `chromium` is missing (deploy/install-browser.sh)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.audio.wav import write_wav
from tests.server.browser import Chromium, find_chromium
from tests.server.conftest import running_server

CHROMIUM = find_chromium()

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run deploy/install-browser.sh)")


@pytest.mark.slow
async def test_the_page_shows_client_and_server_voice_to_voice(say, tmp_path: Path) -> None:
    speech = say("What time do you open tomorrow?")
    mic = np.concatenate([np.zeros(16_000, np.int16), speech, np.zeros(16_000 * 6, np.int16)])
    wav = tmp_path / "caller.wav"
    write_wav(wav, mic.astype(np.float32) / 32768.0, 16_000)
    async with running_server() as run:
        async with Chromium(CHROMIUM, f"{run.url}/?autostart=1", wav, tmp_path / "profile") as browser:
            state: dict = {}
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                state = await browser.evaluate("JSON.parse(JSON.stringify(window.agentCall || {}))") or {}
                if state.get("error"):
                    pytest.fail(f"the page could not call: {state['error']}")
                if state.get("ear") and state["ear"][0]["server_ms"] is not None:
                    break
                await asyncio.sleep(0.25)
            assert state.get("ear"), f"no voice to voice measured at the page; state: {state}"
            first = state["ear"][0]
            # the client hears the reply after the server sent it: its figure is the larger, by the media path
            assert 0 < first["server_ms"] < first["client_ms"] < first["server_ms"] + 1000, first
            cells = await browser.evaluate(
                "[...document.querySelectorAll('#latency tbody tr:first-child td')].map(td => td.textContent)"
            )
            assert cells[1] == f"{first['client_ms']} ms" and cells[2].endswith(" ms"), cells
            await browser.evaluate("document.getElementById('call').click()")
        await run.wait_idle(15)
