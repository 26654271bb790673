"""The browser client in a real headless Chromium with a fake microphone, on the real engines.

Chromium plays a WAV of the caller's sentence as its microphone and opens `/?autostart=1`; the
page calls the agent over WebRTC. The test checks that the agent heard the sentence (whisper's
transcript, shown on the page), that the turn's latency was shown, and that the agent's reply audio
reached the page.
Needs Debian's `chromium` (deploy/install-browser.sh); skipped with the reason when it is missing.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.audio.wav import write_wav
from tests.server.browser import Chromium, find_chromium
from tests.server.conftest import running_server

CHROMIUM = find_chromium()
SENTENCE = "What time do you open tomorrow?"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (run deploy/install-browser.sh)"
)


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


@pytest.mark.slow
async def test_browser_call_with_fake_microphone(real_engines, say, tmp_path: Path) -> None:
    speech = say(SENTENCE)
    mic = np.concatenate([np.zeros(16_000, np.int16), speech, np.zeros(16_000 * 8, np.int16)])
    wav = tmp_path / "caller.wav"
    write_wav(wav, mic.astype(np.float32) / 32768.0, 16_000)
    async with running_server(engines=real_engines) as run:
        async with Chromium(CHROMIUM, f"{run.url}/?autostart=1", wav, tmp_path / "profile") as browser:
            state: dict = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = await browser.evaluate("JSON.parse(JSON.stringify(window.agentCall || {}))") or {}
                if state.get("error"):
                    pytest.fail(f"the page could not call: {state['error']}")
                if state.get("latency") and state["audio"]["peak"] > 0.05:
                    break
                await asyncio.sleep(0.25)
            assert state.get("userTexts"), f"the agent heard nothing; page state: {state}"
            heard = _words(state["userTexts"][-1])
            said = _words(SENTENCE)
            assert len(set(heard) & set(said)) >= len(said) - 1, (heard, said)
            # the turn's latency was shown as the agent started to answer
            assert state.get("latency") and state["latency"][0]["voice_to_voice_ms"] > 0, state
            # the agent's voice reached the page: decoded audio with real level, and RTP packets
            assert state["audio"]["peak"] > 0.05, state["audio"]
            assert state["audio"]["packetsReceived"] > 0, state["audio"]
            # the caller's words and the latency row are on the page for a person to see
            shown = await browser.evaluate("document.getElementById('transcript').innerText")
            assert "open" in shown.lower()
            rows = await browser.evaluate("document.querySelectorAll('#latency tbody tr').length")
            assert rows >= 1
            # hanging up on the page ends the call on the server
            await browser.evaluate("document.getElementById('call').click()")
            assert (await browser.evaluate("window.agentCall.status")) == "ended"
        await run.wait_idle(15)
