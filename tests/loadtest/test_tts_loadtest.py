"""`agent-runtime loadtest tts`: the player model, the files and verdict, and real runs against piper."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime.cli import build_parser
from loadtest.scenario import ScenarioError
from loadtest.tts.client import Player, deltas
from loadtest.tts.main import parse_levels
from loadtest.tts.spec import TTSSLO, load_scenario, load_slo, verdict

REPO = Path(__file__).resolve().parents[2]


def test_player_counts_dry_spells():
    p = Player()
    p.arrive(10.0, 0.5)  # plays 10.0 .. 10.5
    p.arrive(10.2, 0.5)  # buffered: plays to 11.0
    assert p.underruns == 0
    p.arrive(11.3, 0.2)  # 0.3 s dry
    p.arrive(11.4, 0.0)  # empty final message: ignored
    assert p.underruns == 1
    assert p.underrun_s == pytest.approx(0.3)
    assert p.buffer_end == pytest.approx(11.5)


def test_deltas_and_levels():
    assert "".join(deltas("Hello there, friend.", 4)) == "Hello there, friend."
    assert max(len(d) for d in deltas("Hello there, friend.", 4)) == 4
    assert parse_levels("1, 4,16") == [1, 4, 16]
    with pytest.raises(ScenarioError):
        parse_levels("1,x")
    with pytest.raises(ScenarioError):
        parse_levels("0")


def test_shipped_files_load():
    for f in (REPO / "configs/scenarios/tts").glob("*.yaml"):
        assert load_scenario(f).streams
    slo = load_slo(REPO / "configs/slo/tts.yaml")
    assert slo.first_audio_p95_ms and slo.rtf_p95


def test_bad_scenario_is_one_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("streams: [1]\nbogus: 3\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(f)
    assert "\n" not in str(exc.value) and "bogus" in str(exc.value)


def _level(c, fa95, rtf95, errors=None, ok=3):
    errors = errors or {}
    return {"concurrency": c, "ok_replies": ok, "errors": sum(errors.values()), "errors_by_code": errors,
            "first_audio_ms": {"p95": fa95, "p99": fa95}, "rtf": {"p95": rtf95},
            "underrun_rate": 0.0, "underrun_replies_rate": 0.0}


def test_verdict_levels():
    slo = TTSSLO(first_audio_p95_ms=500, rtf_p95=1.0)
    v = verdict(slo, [_level(1, 200, 0.3), _level(4, 300, 0.5), _level(16, 900, 1.4)])
    assert not v.ok and v.max_concurrency_at_slo == 4
    assert "first audio p95" in v.line and "RTF p95" in v.line
    v = verdict(slo.model_copy(update={"min_concurrency": 4}), [_level(1, 200, 0.3), _level(4, 300, 0.5)])
    assert v.ok
    v = verdict(slo, [_level(1, 200, 0.3, {"busy": 2})])
    assert not v.ok and "busy 2" in v.line


def test_cli_parses_tts_mode():
    args = build_parser().parse_args(["loadtest", "tts", "--url", "http://127.0.0.1:1", "--streams", "1,2",
                                      "--replies", "2", "--out", "x"])
    assert args.mode == "tts" and args.streams == "1,2" and args.replies == 2 and args.protocol is None
    args = build_parser().parse_args(["loadtest", "tts", "--url", "http://127.0.0.1:1", "--protocol", "sglang-omni",
                                      "--out", "x"])
    assert args.protocol == "sglang-omni"


@pytest.fixture(scope="module")
def piper_server():
    """A real `agent-runtime tts-serve` (piper) subprocess on loopback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_runtime.cli", "tts-serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**__import__("os").environ, "AGENT_RUNTIME_TTS_TOKEN": ""},
    )
    try:
        url = None
        for line in proc.stdout:  # type: ignore[union-attr]
            m = re.search(r"http://127\.0\.0\.1:\d+", line)
            if m:
                url = m.group(0)
                break
        assert url, "tts-serve did not print its URL"
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _loadtest(url: str, out: Path, slo: Path, *extra: str) -> int:
    cmd = [sys.executable, "-m", "agent_runtime.cli", "loadtest", "tts", "--url", url, "--streams", "2,3",
           "--replies", "1", "--scenario", str(REPO / "configs/scenarios/tts/smoke.yaml"), "--slo", str(slo),
           "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=REPO, timeout=240, capture_output=True, text=True).returncode


@pytest.mark.slow
def test_real_piper_run_passes_and_impossible_slo_fails(piper_server, tmp_path):
    loose = tmp_path / "loose.yaml"
    loose.write_text("first_audio_p95_ms: 60000\nrtf_p95: 20\nmax_underrun_rate: 1\nmax_errors: 0\n")
    out = tmp_path / "pass"
    assert _loadtest(piper_server, out, loose) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["verdict"]["ok"]
    assert [lv["concurrency"] for lv in doc["levels"]] == [2, 3]
    for lv in doc["levels"]:
        assert lv["errors"] == 0 and lv["ok_replies"] == lv["concurrency"]
        assert lv["first_audio_ms"]["p50"] > 0
        assert lv["rtf"]["p50"] > 0
        assert lv["audio_s"] > 0
        assert lv["server_first_audio_ms"]["n"] >= lv["concurrency"]
    for r in doc["replies"]:
        assert r["first_audio_ms"] <= r["done_ms"]
    assert "<svg" in (out / "report.html").read_text()

    strict = tmp_path / "strict.yaml"
    strict.write_text("first_audio_p95_ms: 0.001\n")
    out2 = tmp_path / "fail"
    assert _loadtest(piper_server, out2, strict) == 1
    doc = json.loads((out2 / "report.json").read_text())
    assert not doc["verdict"]["ok"] and "first audio p95" in doc["verdict"]["line"]


@pytest.mark.slow
def test_the_sglang_omni_session_protocol_against_tts_serve(piper_server, tmp_path):
    """`--protocol sglang-omni` drives sglang-omni's streaming session (here served by tts-serve):
    the same figures per reply, the server's own first audio from its `session` endpoint."""
    loose = tmp_path / "loose.yaml"
    loose.write_text("first_audio_p95_ms: 60000\nrtf_p95: 20\nmax_underrun_rate: 1\nmax_errors: 0\n")
    out = tmp_path / "session"
    assert _loadtest(piper_server, out, loose, "--protocol", "sglang-omni") == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["scenario"]["protocol"] == "sglang-omni" and doc["target"] == "sglang-omni speech sessions"
    for lv in doc["levels"]:
        assert lv["errors"] == 0 and lv["ok_replies"] == lv["concurrency"] and lv["audio_s"] > 0
        assert lv["server_first_audio_ms"]["n"] >= lv["concurrency"]
    for r in doc["replies"]:
        assert 0 < r["first_audio_ms"] <= r["done_ms"] and r["segments"] >= 1
