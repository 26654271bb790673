"""The server under attack: its generated config, its process (stderr kept), and watching it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from loadtest.chaos.plan import ChaosPlan
from loadtest.monitor import parse_prometheus
from loadtest.server import Proc, free_port, start

TOKEN_ENV = "AGENT_RUNTIME_TOKEN"


def server_config(plan: ChaosPlan, llm_url: str, out: Path) -> Path:
    """The config the campaign serves with: auth on, short timeouts, the LLM at the fault server."""
    from agent_runtime.config import load_config

    lg = plan.legit
    server: dict[str, Any] = {
        "auth": "on", "auth_token_env": TOKEN_ENV, "loopback_only": True,
        # legit calls + one of each attacker that legitimately holds a call (silent, killed, malformed) + 2
        "max_sessions": lg.concurrency + 6,
        "setup_timeout_s": 2.0, "media_timeout_s": 3.0, "max_pending_per_client": 3,
        "header_timeout_s": 2.0, "keepalive_s": 5.0, "max_json_depth": 32, "shutdown_grace_s": 3.0,
        **plan.server,
    }
    llm: dict[str, Any] = {
        "first_token_timeout_s": 4.0, "inter_token_timeout_s": 1.0, "max_reply_chars": 300, **plan.llm,
        "backend": "openai",
        # the client's own idle timeout stays long: cutting a stall is the runtime's inter-token timeout's job
        "options": {"base_url": llm_url + "/v1", "model": "chaos", "timeout_s": 5.0, "idle_timeout_s": 60.0},
    }
    tts = {"max_segment_chars": 120, **plan.tts}
    raw = {"server": server, "llm": llm, "tts": tts}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "server-config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(path)  # fail here with the config's own message
    return path


@dataclass
class Target:
    """A started server: URL, process, where its stderr goes."""

    proc: Proc
    stderr_path: Path
    config: Path

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.proc.returncode is None

    def tracebacks(self) -> list[str]:
        """Each 'Traceback' in the server's stderr, with the line that names the exception."""
        lines = self.stderr_path.read_text(errors="replace").splitlines() if self.stderr_path.exists() else []
        out = []
        for i, line in enumerate(lines):
            if "Traceback" in line:
                tail = next((x for x in lines[i + 1 : i + 200] if x and not x.startswith((" ", "\t"))), "")
                context = lines[i - 1].strip() if i else ""
                out.append(f"{context} | {tail.strip()}"[:400])
        return out


def target_argv(config: Path, *, instant: bool, port: int) -> list[str]:
    """The `agent-runtime serve` command line of the server under attack (instant ASR/TTS, the config's LLM)."""
    argv = [sys.executable, "-m", "agent_runtime.cli", "serve", "--port", str(port), "--host", "127.0.0.1",
            "--loopback-only", "--config", str(config)]
    if instant:
        argv += ["--instant-engines", "--instant-llm-from-config"]
    return argv


async def start_target(plan: ChaosPlan, config: Path, token: str, out: Path, *, instant: bool,
                       timeout: float = 180.0) -> Target:
    """`agent-runtime serve` (instant ASR/TTS + the configured LLM, or all real engines) on a free port."""
    argv = target_argv(config, instant=instant, port=free_port())
    stderr_path = out / "server-stderr.log"
    p = await start("agent-runtime serve", argv, "/readyz", timeout, env={TOKEN_ENV: token}, stderr_path=stderr_path)
    return Target(p, stderr_path, config)


async def _get(url: str, timeout: float) -> tuple[int, str] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def ready(url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """/readyz's JSON when it answers 200, else None."""
    got = await _get(url + "/readyz", timeout)
    if got is None or got[0] != 200:
        return None
    with contextlib.suppress(ValueError):
        doc = json.loads(got[1])
        return doc if isinstance(doc, dict) else None
    return None


async def occupancy(url: str) -> dict[str, Any]:
    """Calls and pending setups the server reports: /readyz `sessions` (and `pending` if it has one),
    /metrics `agent_active_sessions` and any gauge whose name mentions 'pending'."""
    out: dict[str, Any] = {"readyz": None, "sessions": None, "pending": None, "active_metric": None,
                           "pending_metric": None}
    doc = await ready(url)
    if doc is not None:
        out["readyz"] = doc
        out["sessions"] = doc.get("sessions")
        out["pending"] = doc.get("pending")
    got = await _get(url + "/metrics", 5.0)
    if got is not None and got[0] == 200:
        m = parse_prometheus(got[1])
        out["active_metric"] = sum(v for (name, _), v in m.items() if name == "agent_active_sessions")
        pend = [v for (name, _), v in m.items() if "pending" in name and not name.endswith(("_total", "_count",
                                                                                            "_sum", "_bucket"))]
        out["pending_metric"] = sum(pend) if pend else None
    return out


def _busy(o: dict[str, Any]) -> bool:
    vals = [o["sessions"], o["pending"], o["active_metric"], o["pending_metric"]]
    return o["readyz"] is None or any(v for v in vals if isinstance(v, int | float))


async def wait_recovered(url: str, within_s: float) -> tuple[bool, float, dict[str, Any]]:
    """Poll until the server reports no call and nothing pending; (recovered, seconds waited, last reading)."""
    t0 = time.monotonic()
    last = await occupancy(url)
    while _busy(last) and time.monotonic() - t0 < within_s:
        await asyncio.sleep(0.5)
        last = await occupancy(url)
    return not _busy(last), round(time.monotonic() - t0, 1), last


@dataclass
class HealthWatch:
    """GET /healthz every `interval` s while the campaign runs; counts answers and failures."""

    url: str
    interval: float = 0.5
    timeout: float = 5.0
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="healthz-watch")

    async def _loop(self) -> None:
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                        good = r.status == 200
                        why = f"HTTP {r.status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    good, why = False, type(exc).__name__
                if good:
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.failures) < 10:
                        self.failures.append(f"t={time.monotonic() - t0:.1f}s {why}")
                await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
