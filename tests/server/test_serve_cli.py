"""`agent-runtime serve` as a process: starts, becomes ready, serves the page, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import aiohttp
import pytest

from agent_runtime.server.webrtc_client import WebRTCCaller
from tests.conftest import REPO_ROOT


@pytest.mark.slow
async def test_serve_process_lifecycle(tmp_path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("server:\n  shutdown_grace_s: 1.0\n  loopback_only: true\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_runtime.cli", "serve", "--instant-engines", "--port", "0",
        "--config", str(cfg), cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "AGENT_RUNTIME_TOKEN": ""},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = re.search(r"http://[\d.]+:\d+", line)
        assert url and "no auth (loopback)" in line, line
        base = url.group(0)
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
            async with http.get(f"{base}/") as r:
                page = await r.text()
                assert r.status == 200 and "/static/app.js" in page
            async with http.get(f"{base}/static/app.js") as r:
                assert r.status == 200 and "autostart" in await r.text()
            caller = WebRTCCaller()
            await caller.call_http(base)
            await caller.connected()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with http.get(f"{base}/readyz") as r:  # draining: still answering, not ready
                assert r.status == 503
            rc = await asyncio.wait_for(proc.wait(), 15)  # the call is hung up after the 1 s grace
            assert rc == 0
            await caller.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_serve_refuses_public_bind_without_token() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_runtime.cli", "serve", "--instant-engines", "--host", "0.0.0.0",
        "--port", "0", cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "AGENT_RUNTIME_TOKEN"},
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"AGENT_RUNTIME_TOKEN" in err and b"Traceback" not in err
