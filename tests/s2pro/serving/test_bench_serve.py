"""`agent-runtime s2pro bench-serve --preset tiny` runs on CPU in seconds and prints its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_runtime.cli import build_parser
from agent_runtime.errors import AgentRuntimeError


def test_bench_serve_tiny_prints_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "serve.json"
    args = build_parser().parse_args([
        "s2pro", "bench-serve", "--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--concurrency", "1", "3",
        "max", "--max-streams", "4", "--calls", "3", "--prefix-frames", "20", "--frames-per-word", "1",
        "--words-per-s", "200", "--threads", "1", "--json", str(out),
    ])  # fmt: skip
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "[bench-serve] N=1 done" in text and "[bench-serve] N=4 done" in text
    assert "agg f/s" in text and "RTF p95" in text and "floor:" in text and "x the floor" in text
    data = json.loads(out.read_text())
    levels = data["levels"]
    assert [lv["n"] for lv in levels] == [1, 3, 4]
    for lv in levels:
        assert lv["calls"] == 3 and lv["refused"] == 0 and lv["frames"] > 0
        assert lv["rtf_p50"] > 0 and lv["ttfa_ms_p95"] >= lv["ttfa_ms_p50"] > 0 and lv["steps"] > 0
    assert data["meta"]["floor"]["floor_ms"] > 0 and data["meta"]["fits"] >= 4


def test_bench_serve_with_a_codec_times_batched_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s2pro_fixtures: Path
) -> None:
    """With `--codec`, frames go through the calls' streaming codec decoders, batched by the
    scheduler: first audio is a decoded chunk (later than the first frame) and the codec's time and
    rows per forward are reported."""
    out = tmp_path / "serve.json"
    common = ["s2pro", "bench-serve", "--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--concurrency", "4",
              "--max-streams", "4", "--calls", "6", "--prefix-frames", "20", "--frames-per-word", "2",
              "--words-per-s", "200", "--threads", "1", "--seed", "3"]  # fmt: skip
    args = build_parser().parse_args([*common, "--codec", str(s2pro_fixtures / "codec_tiny.json"), "--json", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "codec: tiny random modded-DAC" in text
    assert next(line for line in text.splitlines() if line.strip().startswith("N ")).split()[-4:] == ["codec", "rows", "mem", "GiB"]
    level = json.loads(out.read_text())["levels"][0]
    assert level["calls"] == 6 and level["codec_ms_per_frame"] > 0
    assert level["codec_rows_per_forward"] >= 1.0
    bad = build_parser().parse_args([*common, "--codec", str(tmp_path / "missing.json")])
    with pytest.raises(AgentRuntimeError, match="not full, mid, none or a codec-config JSON file"):
        bad.func(bad)

