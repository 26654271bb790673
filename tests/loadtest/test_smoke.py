"""The harness end to end: `agent-runtime loadtest --start-server --instant-engines` on a tiny scenario.

Asserts that the harness works (reports written, samples taken over both transports, a barge-in
measured, a verdict and exit code), not how fast the server is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCENARIO = """
name: ci-smoke
transport: mixed
caller:
  steps:
    - text: "What time do you open tomorrow?"
    - text: "Sorry, do you deliver on weekends?"
      barge_in_after_ms: 300
    - hang_up_after_ms: 300
  start_silence_ms: 200
  wait_after_reply_ms: 400
  max_reply_wait_s: 8
load: {kind: step, levels: [1, 2], step_s: LEVEL_S}
limits: {max_duration_s: 50, max_calls: 8, call_timeout_s: 20, warmup_calls: 0}
"""


def _loadtest(tmp_path: Path, slo: str, level_s: float, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "scenario.yaml").write_text(SCENARIO.replace("LEVEL_S", str(level_s)))
    (tmp_path / "slo.yaml").write_text(slo)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "agent_runtime.cli", "loadtest", "--start-server", "--instant-engines",
           "--scenario", str(tmp_path / "scenario.yaml"), "--slo", str(tmp_path / "slo.yaml"), "--out", str(out),
           "--no-progress", *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120), out


@pytest.mark.slow
def test_smoke_run_writes_reports_and_holds_a_lax_slo(tmp_path: Path) -> None:
    slo = "voice_to_voice_p95_ms: 5000\nbarge_in_p95_ms: 5000\nmax_unanswered_rate: 0.5\n"
    proc, out = _loadtest(tmp_path, slo, 6)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SLO HOLDS" in proc.stdout and "max concurrent calls at your SLO: 2" in proc.stdout
    doc = json.loads((out / "report.json").read_text())
    run = doc["runs"][0]
    assert [lv["concurrency"] for lv in run["levels"]] == [1, 2]
    assert {c["transport"] for c in run["calls"]} == {"webrtc", "twilio"}
    assert all(c["status"] == "ok" for c in run["calls"])
    v2v = [s["voice_to_voice_ms"] for s in run["samples"] if s["voice_to_voice_ms"] is not None]
    assert len(v2v) >= 4 and all(0 < x < 5000 for x in v2v)
    assert any(s["barge_in_ms"] is not None for s in run["samples"])
    assert run["levels"][0]["server_stage_ms"]  # scraped from /metrics
    assert run["resources"] and run["resources"][0]["rss_mb"] > 10  # sampled from /proc
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 4 and "http://" not in page.split("</style>")[0]  # inline, no CDN


@pytest.mark.slow
def test_an_impossible_slo_exits_1(tmp_path: Path) -> None:
    proc, out = _loadtest(tmp_path, "voice_to_voice_p95_ms: 1\n", 2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SLO VIOLATED" in proc.stdout and "voice-to-voice p95" in proc.stdout
    assert (out / "report.json").exists() and (out / "report.html").exists()


def test_harness_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO.replace("LEVEL_S", "1"))
    base = [sys.executable, "-m", "agent_runtime.cli", "loadtest", "--out", str(tmp_path / "o")]
    remote = subprocess.run([*base, "--url", "http://10.0.0.1:8080", "--scenario", str(tmp_path / "s.yaml")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert remote.returncode == 2 and "not a loopback address" in remote.stderr
    (tmp_path / "bad.yaml").write_text("name: x\n")
    bad = subprocess.run([*base, "--url", "http://127.0.0.1:9", "--scenario", str(tmp_path / "bad.yaml")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "caller: Field required" in bad.stderr and "Traceback" not in bad.stderr
    down = subprocess.run([*base, "--url", "http://127.0.0.1:9", "--scenario", str(tmp_path / "s.yaml")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert down.returncode == 2 and "no server answering at http://127.0.0.1:9" in down.stderr
    assert not (tmp_path / "o" / "report.json").exists()
