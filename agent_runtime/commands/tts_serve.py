"""`agent-runtime tts-serve`: the configured TTS engine as a speech service for many clients."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

log = logging.getLogger("agent_runtime.tts_service")

DESCRIPTION = """\
Loads the TTS engine of the config's `tts:` section (default piper), warms it, and serves it:

  POST /v1/audio/speech   sglang-omni's OpenAI-style request {"input": ..., "voice": ..., "stream": ...}:
                          one WAV (or raw PCM with response_format "pcm"), or with "stream": true
                          server-sent events of base64 WAV chunks, or raw PCM with stream_format "audio"
  GET  /v1/audio/stream   WebSocket for live replies: start, text deltas, flush, cancel (barge-in);
                          audio comes back tagged with the text segment it speaks
  GET  /v1/audio/speech/stream  sglang-omni's streaming WebSocket: session.config, input.text,
                          input.done; per sentence audio.start, binary audio, audio.done
  GET  /v1/info           engine, sample rate, limits
  GET  /healthz /readyz   liveness; readiness with {"streams", "max_streams"} for load balancing
  GET  /metrics           Prometheus: active streams, streams by outcome, rejections, time to first
                          audio, real-time factor, cancel latency

The `tts_server:` section sets the limits (max_streams, max_connections, max_body_bytes,
max_input_chars, max_stream_chars, idle_timeout_s, reference_dir, allowed_hosts, header_timeout_s,
max_json_depth, shutdown_grace_s) and auth: with tts_server.auth on (or auto and a non-loopback
bind) every route but /healthz and /readyz needs `Authorization: Bearer $AGENT_RUNTIME_TTS_TOKEN`.
When ready it prints `tts-serve listening on http://HOST:PORT`. SIGTERM/SIGINT drain: /readyz turns
503 and new streams are refused at once, streams in progress get tts_server.shutdown_grace_s, then
the sockets close (1001) and the process exits 0. A call server uses it with
`tts: {engine: remote, options: {urls: [http://HOST:PORT]}}`. See docs/tts-serve.md.

example:
  agent-runtime tts-serve --config configs/s2pro.yaml --host 0.0.0.0 --port 8081 --max-streams 8
  curl -s localhost:8081/v1/audio/speech -H 'Content-Type: application/json' \\
       -d '{"input": "Hello there."}' -o hello.wav
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tts-serve",
        help="serve the configured TTS engine to other machines (HTTP speech + streaming WebSocket)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config: tts: picks the engine, tts_server: the limits")
    p.add_argument("--host", default=None, help="bind address (default: tts_server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: tts_server.port, 8081; 0 = any free port)")
    p.add_argument(
        "--max-streams", type=int, default=None,
        help="speech streams synthesised at once; more are refused as busy (default: tts_server.max_streams, 32)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent_runtime.config import load_config

    overrides: dict = {"tts_server": {}}
    if args.host is not None:
        overrides["tts_server"]["host"] = args.host
    if args.port is not None:
        overrides["tts_server"]["port"] = args.port
    if args.max_streams is not None:
        overrides["tts_server"]["max_streams"] = args.max_streams
    config = load_config(args.config, overrides)
    return asyncio.run(tts_serve(config))


def load_engine(config) -> object:
    """Build the `tts:` engine and warm it (blocking: run it in a thread)."""
    from agent_runtime.tts.registry import create_synthesizer

    synth = create_synthesizer(config.tts.engine, dict(config.tts.options))
    synth.warmup()
    return synth


async def tts_serve(config, *, ready: asyncio.Event | None = None) -> int:
    """Load and warm the engine, serve until SIGINT/SIGTERM, then drain and stop."""
    from agent_runtime.server.slowloris import start_http
    from agent_runtime.tts_service.server import TTSServer

    s = config.tts_server
    server = TTSServer(config, load=lambda: load_engine(config))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loading = asyncio.create_task(server.load())
    await asyncio.wait([loading, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():  # stopped while loading
        loading.cancel()
        return 0
    loading.result()  # a load error propagates (the CLI prints it)
    runner = await start_http(server.app, s.host, s.port, header_timeout_s=s.header_timeout_s)
    port = runner.addresses[0][1] if runner.addresses else s.port
    host = f"[{s.host}]" if ":" in s.host else s.host
    auth = "bearer token required" if server.token is not None else "no auth"
    print(f"tts-serve listening on http://{host}:{port}  ({config.tts.engine}, {auth})", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: refusing new streams, %d in progress", len(server.runs))
    await server.drain(s.shutdown_grace_s)
    await runner.cleanup()
    if server.synth is not None:
        try:
            server.synth.close()
        except Exception as exc:  # exiting anyway
            log.warning("closing the engine failed: %s", exc)
    return 0
