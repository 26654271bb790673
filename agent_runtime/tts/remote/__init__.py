"""The `remote` TTS engine: speak through one or more speech servers instead of an in-process engine.

* `synthesizer.RemoteSynthesizer`: the engine (`tts.engine: remote`), options and protocol choice.
* `pool.ServerPool`: the servers, their health (`/readyz` polls) and load, idle connections.
* `stream_client.RemoteStream`: one reply over the agent-runtime WebSocket protocol
  (`agent_runtime.tts_service.protocol`), with transparent retry on another server before audio.
* `sglang.SglangUtterance`: one reply over sglang-omni's `POST /v1/audio/speech` (SSE), segment by
  segment, cut client-side.
"""
