"""`agent-runtime serve`: the call server (browser WebRTC, Twilio Media Streams, operations)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("agent_runtime.server")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve calls: WebRTC from browsers, Twilio Media Streams from phones",
        description=(
            "Starts the HTTP server: the browser client at /, WebRTC signaling at POST /offer, the Twilio "
            "Media Streams WebSocket at /twilio, and /healthz, /readyz, /metrics. Engines load in the "
            "background (/readyz turns 200 when they are ready). SIGTERM/SIGINT drain: new calls get 503, "
            "calls in progress get server.shutdown_grace_s to finish. See docs/server.md."
        ),
    )
    p.add_argument("--host", default=None, help="bind address (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: server.port, 8080; 0 = any)")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: built-in defaults)")
    p.add_argument(
        "--instant-engines", action="store_true",
        help="answer with instant stand-in engines (fixed transcript, reply and tone): for testing, load tests "
        "and overhead; the configured engines are not loaded",
    )
    p.add_argument(
        "--instant-reply", metavar="short|long|FILE", default=None,
        help="with --instant-engines: the reply the instant LLM gives; short (default, about 0.6 s of tone), "
        "long (about 4 s: long enough to talk over) or a UTF-8 text file",
    )
    p.add_argument(
        "--instant-llm-from-config", action="store_true",
        help="with --instant-engines: instant ASR and TTS, but the LLM the config names (llm.backend/options), "
        "so the real LLM client runs (e.g. against a fault-injecting LLM server)",
    )
    p.add_argument(
        "--loopback-only", action="store_true", help="offer only 127.0.0.1 ICE candidates (server.loopback_only)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent_runtime.config import load_config
    from agent_runtime.errors import ConfigError

    if not args.instant_engines and (args.instant_reply is not None or args.instant_llm_from_config):
        raise ConfigError("--instant-reply and --instant-llm-from-config need --instant-engines")
    if args.instant_reply is not None and args.instant_llm_from_config:
        raise ConfigError("--instant-reply and --instant-llm-from-config exclude each other (the LLM writes the reply)")

    overrides: dict = {"server": {}}
    if args.host is not None:
        overrides["server"]["host"] = args.host
    if args.port is not None:
        overrides["server"]["port"] = args.port
    if args.loopback_only:
        overrides["server"]["loopback_only"] = True
    if not getattr(args, "verbose", False):
        logging.getLogger("aioice").setLevel(logging.WARNING)  # one INFO line per ICE check otherwise
    config = load_config(args.config, overrides)
    instant = None
    if args.instant_engines:
        from agent_runtime.bench.instant import reply_text

        instant = InstantEngines(reply_text(args.instant_reply or "short"), args.instant_llm_from_config)
    return asyncio.run(serve(config, instant=instant))


@dataclass(frozen=True, slots=True)
class InstantEngines:
    """`serve --instant-engines`: what the stand-in engines answer."""

    reply: str
    """The instant LLM's reply text."""
    llm_from_config: bool = False
    """Use the configured LLM instead of the instant one."""


async def serve(config, *, instant: InstantEngines | None = None, ready: asyncio.Event | None = None) -> int:
    """Run the server until SIGINT/SIGTERM, then drain and stop. With `instant`, on stand-in engines."""
    from agent_runtime.server.app import CallServer
    from agent_runtime.server.slowloris import start_http

    if instant is not None:
        from agent_runtime.engines import build_instant_engines

        if instant.llm_from_config:
            from agent_runtime.plugins import check_plugins

            check_plugins(config)

        def load():
            return build_instant_engines(config, reply=instant.reply, llm_from_config=instant.llm_from_config)
    else:
        from agent_runtime.engines import build_engines
        from agent_runtime.plugins import check_plugins

        check_plugins(config)  # an unknown plugin name is an error now, not a server never ready
        loop = asyncio.get_running_loop()

        def load():
            return build_engines(config, warm_loop=loop)  # /readyz turns 200 once the engines are warm

    server = CallServer(config, load)
    s = config.server
    runner = await start_http(server.app, s.host, s.port, header_timeout_s=s.header_timeout_s)
    port = runner.addresses[0][1] if runner.addresses else s.port
    auth = banner_auth(server.token is not None, s.host)
    print(f"agent-runtime serve: http://{s.host}:{port}/  ({auth}; engines loading, see /readyz)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: refusing new calls, %d in progress", len(server.calls))
    await server.drain(s.shutdown_grace_s)
    await runner.cleanup()
    if server.engines is not None:
        with _suppress():
            await server.engines.llm.aclose()
    return 0


def banner_auth(token_required: bool, host: str) -> str:
    """How the start-up banner describes auth (and a warning when a public bind has none)."""
    from agent_runtime.server.security import is_loopback_host

    if token_required:
        return "bearer token required"
    if is_loopback_host(host):
        return "no auth (loopback)"
    log.warning("server.auth is off and the server binds to %s: anyone who can reach it can call", host)
    return "no auth: server.auth is off"


def _suppress():
    import contextlib

    return contextlib.suppress(Exception)
