"""`agent-runtime loadtest chaos`: legit calls while attackers abuse the server, then a verdict.

Modules: `plan` (the campaign file), `fault_llm` (an OpenAI-compatible SSE server that misbehaves on
schedule), `target` (the server under test, started with auth on and short timeouts), `legit` (real
calls with the token), `attacks_ws` / `attacks_webrtc` / `attacks_http` (squatters, silent peers, malformed
phone streams, hostile HTTP, slowloris, killed callers), `probe` (one attempt's outcome), `campaign` (runs it all, bounded), `verdict` (checks, table, JSON). Loopback only.
"""
