"""Starting what is under test as a subprocess on a free loopback port, and stopping it.

`agent-runtime serve` (real engines, or `--instant-engines --instant-reply long`), the shared
`agent-runtime llm-serve`, and the Pipecat bot (in .venv-pipecat). Each prints its URL on stdout; we
wait (bounded) for it to answer, then hand back the URL and the PID to watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


class ServerStartError(RuntimeError):
    """The server under test did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    url: str
    proc: asyncio.subprocess.Process
    drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self, grace: float = 15.0) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def start(name: str, argv: list[str], ready_path: str, timeout: float, env: dict | None = None,
                stderr_path: Path | None = None) -> Proc:
    """Run `argv`, read `http://127.0.0.1:PORT` from its stdout, wait until GET `ready_path` is 200.
    With `stderr_path`, the process's stderr goes to that file (and errors point to it)."""
    err = stderr_path.open("wb") if stderr_path is not None else asyncio.subprocess.DEVNULL
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "AGENT_RUNTIME_TOKEN": "", **(env or {})}, start_new_session=True,
        )
    finally:
        if stderr_path is not None:
            err.close()  # the child holds its own copy
    see = f" (see {stderr_path})" if stderr_path is not None else ""
    p = Proc(name, "", proc)
    try:
        async with asyncio.timeout(timeout):
            assert proc.stdout is not None
            while not p.url:
                line = (await proc.stdout.readline()).decode(errors="replace")
                if not line:
                    raise ServerStartError(f"{name} exited with {await proc.wait()} before printing its URL{see}")
                m = re.search(r"http://127\.0\.0\.1:\d+", line)
                if m:
                    p.url = m.group(0)
            p.drain = asyncio.create_task(_drain(proc.stdout))
            async with aiohttp.ClientSession() as http:
                while True:
                    if proc.returncode is not None:
                        raise ServerStartError(f"{name} exited with {proc.returncode} while starting{see}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(p.url + ready_path) as r:
                            if r.status == 200:
                                return p
                    await asyncio.sleep(0.2)
    except TimeoutError:
        await p.stop(2)
        raise ServerStartError(f"{name} not ready within {timeout:.0f} s{see}") from None
    except BaseException:
        await p.stop(2)
        raise


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.readline():
            pass


INSTANT_LONG_REPLY = ["--instant-engines", "--instant-reply", "long"]
"""`serve` flags for stand-in engines whose reply lasts about 4 s: long enough to talk over."""


def runtime_argv(*, instant: bool, config: Path | None, port: int) -> list[str]:
    """The `agent-runtime serve` command line the harness runs (a process of its own)."""
    argv = [sys.executable, "-m", "agent_runtime.cli", "serve", "--port", str(port), "--host", "127.0.0.1",
            "--loopback-only"]
    if config is not None:
        argv += ["--config", str(config)]
    if instant:
        argv += INSTANT_LONG_REPLY
    return argv


async def start_runtime(*, instant: bool, config: Path | None, timeout: float = 180.0) -> Proc:
    """`agent-runtime serve` on a free loopback port (instant: with the long-reply instant engines)."""
    argv = runtime_argv(instant=instant, config=config, port=free_port())
    return await start("agent-runtime serve", argv, "/readyz", timeout)


async def start_llm_server(timeout: float = 120.0) -> Proc:
    """`agent-runtime llm-serve` (SmolLM2) on a free loopback port, shared by both runtimes."""
    argv = [sys.executable, "-m", "agent_runtime.cli", "llm-serve", "--port", str(free_port())]
    return await start("agent-runtime llm-serve", argv, "/health", timeout)


def pipecat_python() -> Path:
    return REPO / ".venv-pipecat" / "bin" / "python"


def require_pipecat() -> Path:
    """The Pipecat venv's python, or ServerStartError saying how to make it (checked before any run)."""
    py = pipecat_python()
    if not py.exists():
        raise ServerStartError(f"no {py.parent.parent.name}: run bash loadtest/peers/setup_pipecat.sh first")
    return py


async def start_pipecat(llm_url: str, *, system_prompt: str, max_tokens: int, stop_secs: float,
                        max_calls: int, timeout: float = 180.0) -> Proc:
    """The Pipecat bot (loadtest/peers/pipecat_bot.py) in .venv-pipecat, configured like the runtime."""
    py = require_pipecat()
    argv = [str(py), str(REPO / "loadtest" / "peers" / "pipecat_bot.py"), "--port", str(free_port()),
            "--llm-url", llm_url + "/v1", "--system-prompt", system_prompt, "--max-tokens", str(max_tokens),
            "--stop-secs", str(stop_secs), "--max-calls", str(max_calls)]
    return await start("pipecat bot", argv, "/healthz", timeout)


async def start_tts_serve(*, config: Path | None = None, extra_args: Sequence[str] = (), env: dict | None = None,
                          timeout: float = 120.0) -> Proc:
    """`agent-runtime tts-serve` on a free loopback port; ready when /readyz answers 200.

    `AGENT_RUNTIME_TTS_TOKEN` is emptied (no auth on loopback) unless `env` sets it."""
    argv = [sys.executable, "-m", "agent_runtime.cli", "tts-serve", "--host", "127.0.0.1", "--port", str(free_port())]
    if config is not None:
        argv += ["--config", str(config)]
    argv += list(extra_args)
    return await start("agent-runtime tts-serve", argv, "/readyz", timeout,
                       env={"AGENT_RUNTIME_TTS_TOKEN": "", **(env or {})})
