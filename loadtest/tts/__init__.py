"""`agent-runtime loadtest tts`: a TTS-only load test against `agent-runtime tts-serve`.

A wire client only: it speaks the WebSocket stream protocol of `agent_runtime.tts_service.protocol`
and uses nothing else of the runtime (no engines, no remote synthesizer). See docs/loadtest.md.

| module | what |
|---|---|
| `spec.py` | the scenario (`configs/scenarios/tts/`) and SLO (`configs/slo/tts.yaml`) files, the verdict |
| `client.py` | one stream: LLM-paced text deltas in, audio out; first audio, RTF, simulated-player underruns |
| `report.py` | per-level statistics, report.json, report.html, the text summary |
| `main.py` | the command: start or reach the server, run the levels, write the reports |
"""
