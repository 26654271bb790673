"""`agent-runtime synth` with S2-Pro flags and `agent-runtime s2pro bench-synth`, in process, tiny."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent_runtime.cli import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_synth_with_checkpoint_streams_and_writes_a_wav(s2pro_fixtures: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s2.wav"
    config = tmp_path / "tts.yaml"
    config.write_text(f"tts:\n  engine: s2pro\n  options:\n    codec: {s2pro_fixtures / 'codec_tiny.pth'}\n"
                      f"    max_frames_per_segment: 30\n")  # fmt: skip
    rc = _run([
        "synth", "Hello there, my friend. This is [laugh] S2-Pro.", "-o", str(out), "--stream", "--no-warmup",
        "--config", str(config), "--checkpoint", str(s2pro_fixtures / "tiny"),
        "--codec-config", str(s2pro_fixtures / "codec_tiny.json"), "--seed", "3",
    ])  # fmt: skip
    assert rc == 0 and out.stat().st_size > 44
    captured = capsys.readouterr()
    lines = [ln for ln in captured.out.splitlines() if ln.startswith("+")]
    assert any("segment 0" in ln and "'Hello there, my friend.'" in ln for ln in lines)
    assert any("segment 1" in ln for ln in lines)
    assert "s2pro: loaded" in captured.err


def test_bench_synth_runs_on_a_tiny_random_model(s2pro_fixtures: Path, capsys) -> None:
    rc = _run([
        "s2pro", "bench-synth", "--dim", "64", "--heads", "4", "--kv-heads", "2", "--intermediate", "128",
        "--slow-layers", "1", "--fast-layers", "1", "--vocab", "512", "--codebooks", "4", "--codebook-size", "32",
        "--prefix-frames", "8", "--codec", str(s2pro_fixtures / "codec_tiny.json"), "--repeats", "1",
        "--rates", "200", "--frames-per-char", "0.2",
    ])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("engine floor") == 2
    assert "first segment 'Sure,'" in out  # the opener is a segment of its own
    assert "first segment 'We are open tomorrow from nine until six,'" in out
    opener, plain = [ln for ln in out.splitlines() if ln.strip().startswith("200 |")]
    assert len(re.findall(r"\d+ ms", opener)) == 5  # with the sentence-buffered baseline
    assert len(re.findall(r"\d+ ms", plain)) == 3  # the baseline runs for the first reply only


def test_bench_synth_refuses_an_unknown_reply(capsys) -> None:
    assert _run(["s2pro", "bench-synth", "--replies", "opener,shouting"]) != 0
    assert "shouting" in capsys.readouterr().err


def test_engine_choice_and_start_up_message() -> None:
    import argparse

    from agent_runtime.commands.synth import engine_choice, register
    from agent_runtime.config import load_config
    from agent_runtime.engines import tts_choice_message

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def choice(*argv: str) -> tuple[str, dict]:
        return engine_choice(parser.parse_args(["synth", "hi", "-o", "x.wav", *argv]))

    assert choice() == ("piper", {})
    assert choice("--voice", "joe") == ("piper", {"voice": "joe"})
    engine, options = choice("--checkpoint", "ck", "--codec", "c.pth", "--voice", "alice")
    assert engine == "s2pro" and options == {"checkpoint": "ck", "codec": "c.pth", "voice": "alice"}
    assert "embedded default" in tts_choice_message(load_config(None))
    s2 = load_config(None, {"tts": {"engine": "s2pro", "options": {"checkpoint": "ck", "codec": "c.pth"}}})
    assert tts_choice_message(s2).startswith("TTS: S2-Pro (local backend), checkpoint ck, codec c.pth")
