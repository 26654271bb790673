"""Load-test harness for latency SLOs: simulated callers over WebRTC and the phone WebSocket.

`agent-runtime loadtest --url URL --scenario FILE [--slo FILE] --out DIR` drives it; see docs/loadtest.md.
Modules: scenario/slo (files), audio (caller utterances), callers/ (WebRTC and Twilio legs),
script (one call), analysis (what the caller heard), runner (the schedule), monitor (server CPU/RSS and
/metrics), server (starting the server under test), report/html (outputs), peers/ (the Pipecat bot).
"""
