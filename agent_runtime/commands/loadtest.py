"""`agent-runtime loadtest`: simulated callers against a server on loopback, with an SLO verdict.

The harness lives in the top-level `loadtest` package (docs/loadtest.md); this module only declares
the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  agent-runtime loadtest --start-server --instant-engines --scenario configs/scenarios/smoke.yaml \\
      --slo configs/slo/default.yaml --out out/loadtest-smoke
  agent-runtime loadtest --url http://127.0.0.1:8080 --server-pid $(pgrep -f 'agent-runtime serve') \\
      --scenario configs/scenarios/ramp.yaml --slo configs/slo/default.yaml --out out/ramp
  agent-runtime loadtest --compare-pipecat --scenario configs/scenarios/compare.yaml --out out/compare
  agent-runtime loadtest chaos --start-server --instant-engines --duration 60 --out out/chaos
  agent-runtime loadtest tts --start-server --scenario configs/scenarios/tts/steps.yaml \\
      --slo configs/slo/tts.yaml --out out/loadtest-tts
  agent-runtime loadtest tts --url http://127.0.0.1:8081 --streams 1,4,16 --replies 3 --out out/tts

exit status: 0 the SLO holds, 1 it does not, 2 harness error (bad file, non-loopback URL, server
that would not start). Only loopback targets (127.0.0.0/8, ::1, localhost) are accepted.

`loadtest chaos` (docs/reliability.md): legit calls while attackers abuse the server (squatted slots,
silent peers, malformed phone streams, hostile HTTP, slowloris, callers that vanish, an LLM that stalls
or sends garbage); exit 0 only if no legit call was lost, every slot came back, no traceback, the server
stayed up and its RSS growth stayed bounded (1 otherwise, 2 harness error).

`loadtest tts` (docs/loadtest.md, "TTS-only load test"): concurrent speech streams against
`agent-runtime tts-serve` over its WebSocket, text arriving at an LLM's pace; per level time to first
audio, RTF, player underruns and errors by code, checked against configs/slo/tts.yaml (exit 0/1/2 as
above). With --start-server it starts tts-serve (--server-config picks its engine and limits).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadtest",
        help="load-test a server with simulated callers and check a latency SLO",
        description=(
            "Phones the server with simulated callers over real WebRTC (aiortc on loopback) and over the "
            "Twilio Media Streams WebSocket, following a scenario (utterances, pauses, barge-ins, noise, "
            "hang-ups; step/linear ramps or a soak). Measures at the caller: voice-to-voice latency, "
            "barge-in stop latency, gaps in agent audio, failed and dropped calls; reads per-stage timings "
            "from /metrics and the server's CPU and RSS from /proc. Writes DIR/report.json (every sample) "
            "and DIR/report.html (plots), prints the verdict and the max concurrent calls at the SLO."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mode", nargs="?", choices=["chaos", "tts"], default=None,
                   help="chaos: the abuse campaign (needs --start-server; --scenario defaults to "
                        "configs/scenarios/chaos/default.yaml); tts: TTS-only load test against "
                        "`agent-runtime tts-serve` (--scenario from configs/scenarios/tts/, optional)")
    target = p.add_argument_group("target (one of)")
    target.add_argument("--url", help="base URL of a running `agent-runtime serve` (or `tts-serve` for the tts mode; loopback only)")
    target.add_argument("--start-server", action="store_true",
                        help="start `agent-runtime serve` on a free loopback port for the run, then stop it")
    target.add_argument("--compare-pipecat", action="store_true",
                        help="side by side: start llm-serve, run against agent-runtime (real engines) and then "
                             "against a Pipecat bot on the same engines (needs loadtest/peers/setup_pipecat.sh)")
    p.add_argument("--scenario", type=Path, default=None, metavar="FILE",
                   help="scenario YAML (configs/scenarios/); required except for chaos")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="chaos: how long attacks and legit calls run (overrides the file's duration_s)")
    p.add_argument("--slo", type=Path, default=None, metavar="FILE",
                   help="SLO YAML (configs/slo/default.yaml); default: only dropped/failed calls are checked")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where report.json and report.html go")
    p.add_argument("--instant-engines", action="store_true",
                   help="with --start-server: instant stand-in engines (measures the runtime itself)")
    p.add_argument("--server-config", type=Path, default=None, metavar="FILE",
                   help="with --start-server/--compare-pipecat: the server's YAML config (call slots are raised to fit)")
    p.add_argument("--server-pid", type=int, default=None, metavar="PID",
                   help="with --url: the server's process id, to sample its CPU and RSS")
    p.add_argument("--streams", default=None, metavar="N,N,...",
                   help="tts: concurrent stream levels, e.g. 1,4,16 (overrides the scenario's streams)")
    p.add_argument("--replies", type=int, default=None, metavar="R",
                   help="tts: replies per stream at each level (overrides the scenario's replies)")
    p.add_argument("--protocol", choices=("agent-runtime", "sglang-omni"), default=None,
                   help="tts: tts-serve's /v1/audio/stream, or sglang-omni's streaming session "
                        "/v1/audio/speech/stream (an sglang-omni server, or tts-serve); overrides the scenario's")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.mode != "tts" and (args.streams is not None or args.replies is not None or args.protocol is not None):
        import sys

        print("error: --streams, --replies and --protocol apply to `loadtest tts` only", file=sys.stderr)
        return 2
    if args.mode == "chaos":
        from loadtest.chaos.main import run as chaos

        return chaos(args)
    if args.mode == "tts":
        from loadtest.tts.main import run as tts

        return tts(args)
    from loadtest.main import run

    return run(args)
