"""`agent-runtime bench tts-wire`: the command line, the table, and a small real run (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime.bench.tts_wire import _merge_server, format_table
from agent_runtime.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_cli_parses():
    args = build_parser().parse_args(["bench", "tts-wire", "--streams", "1", "2", "--rounds", "2"])
    assert args.streams == [1, 2] and args.rounds == 2 and args.config is None


def test_merge_server_weights_by_count():
    assert _merge_server([None, {"n": 0}]) == {"n": 0, "p50": None, "p95": None}
    m = _merge_server([{"n": 1, "p50": 100.0, "p95": 200.0}, {"n": 3, "p50": 200.0, "p95": 400.0}])
    assert m == {"n": 4, "p50": 175.0, "p95": 350.0}


def test_table_names_the_target():
    lv = {"streams": 1, "local_ms": {"n": 2, "p50": 100.0, "p95": 120.0},
          "remote_ms": {"n": 2, "p50": 105.0, "p95": 130.0}, "wire_p50_ms": 5.0,
          "server_first_audio_ms": {"n": 2, "p50": 101.0, "p95": 119.0}, "wire_vs_server_p50_ms": 4.0}
    out = {"engine": "piper", "chars_per_s": 60.0, "delta_chars": 4, "rounds": 1, "levels": {"1": lv}}
    text = format_table(out, "test machine")
    assert "+5.0 ms, within the 10 ms target" in text and "+4.0 ms, within" in text


@pytest.mark.slow
def test_small_real_run(tmp_path):
    js = tmp_path / "wire.json"
    r = subprocess.run([sys.executable, "-m", "agent_runtime.cli", "bench", "tts-wire", "--streams", "1", "2",
                        "--rounds", "2", "--json-out", str(js)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "local p50" in r.stdout and "remote-server" in r.stdout and "target" in r.stdout
    doc = json.loads(js.read_text())
    assert doc["engine"] == "piper" and doc["options"] == {"noise_scale": 0}
    assert set(doc["levels"]) == {"1", "2"}
    for key, lv in doc["levels"].items():
        n = int(key) * 2
        assert lv["local_ms"]["n"] == n and lv["remote_ms"]["n"] == n
        assert lv["local_ms"]["p50"] > 0 and lv["remote_ms"]["p50"] > 0
        assert isinstance(lv["wire_p50_ms"], float)
        assert lv["server_first_audio_ms"]["n"] == n  # one server log line per remote stream
        assert lv["server_histogram_first_audio_ms"]["n"] == n
        assert isinstance(lv["wire_vs_server_p50_ms"], float)
        assert lv["errors"] == {"local": 0, "remote": 0}
