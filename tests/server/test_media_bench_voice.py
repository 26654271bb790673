"""`bench media --voice-calls`: voice to voice at the client, next to the server's own figure."""

from __future__ import annotations

import numpy as np
import pytest

from agent_runtime.commands.bench_media import voice_table
from agent_runtime.server.media_bench import (
    QUESTIONS,
    agent_onset,
    caller_speech_end,
    summarize_voice,
    voice_calls,
)

RATE = 48_000


def _frame(level: int) -> np.ndarray:
    return np.full(960, level, dtype=np.int16)


def test_the_caller_speech_end_is_the_last_audible_10_ms_that_left() -> None:
    half = np.concatenate([np.full(480, 8000, np.int16), np.full(480, 10, np.int16)])  # audible 10 ms, faint 10
    sent = [(1.00, _frame(8000)), (1.02, half), (1.04, _frame(10)), (1.06, _frame(0))]
    assert abs(caller_speech_end(sent) - 1.03) < 1e-9
    assert caller_speech_end([(1.0, _frame(0))]) is None


def test_the_agent_onset_is_its_first_audible_sample_after_the_caller() -> None:
    late = np.zeros(960, np.int16)
    late[480:] = 2000
    got = [(0.5, _frame(5000)), (1.10, _frame(0)), (1.12, late), (1.14, _frame(5000))]
    assert abs(agent_onset(got, 1.0) - (1.12 + 480 / RATE)) < 1e-9  # the 0.5 burst came before: skipped
    assert agent_onset(got[:2], 1.0) is None


def test_summary_and_table_fields() -> None:
    samples = [
        {"kind": "plain", "client_ms": 700.0, "server_ms": 600.0, "premature": False},
        {"kind": "plain", "client_ms": 720.0, "server_ms": 610.0, "premature": False},
        {"kind": "long", "client_ms": None, "server_ms": None, "premature": True},
    ]
    s = summarize_voice(samples)
    assert s["plain"] == {"client_p50_ms": 710.0, "server_p50_ms": 605.0}
    assert s["long"] == {"client_p50_ms": None, "server_p50_ms": None}
    assert s["all"]["client_p50_ms"] == 710.0 and s["premature_replies"] == 1 and s["unanswered"] == 1
    table = voice_table({"after": s}, 2, instant=True)
    assert "client p50" in table and "server p50" in table
    row = next(line for line in table.splitlines() if line.strip().startswith("after") and "plain" in line)
    assert row.split()[-3:] == ["710", "605", "105"]  # client, server, the gap between them


@pytest.mark.slow
async def test_a_short_run_with_instant_engines_reports_both_figures() -> None:
    results = await voice_calls(None, 1, instant=True, modes=[("after", "energy")])
    r = results["after"]
    assert [s["kind"] for s in r["samples"]] == [k for k, _, _ in QUESTIONS]
    for s in r["samples"]:
        assert s["client_ms"] is not None and s["server_ms"] is not None
        # the client hears the reply after the server sends it, and the media path adds tens of ms, not seconds
        assert -60 <= s["client_ms"] - s["server_ms"] <= 300, s
    assert r["all"]["client_p50_ms"] is not None and r["all"]["server_p50_ms"] is not None
