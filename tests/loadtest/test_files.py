"""Scenario and SLO files: shipped ones validate, bad ones fail with one-line messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.scenario import ScenarioError, load_scenario
from loadtest.slo import load_slo
from tests.conftest import REPO_ROOT

GOOD = """
name: t
caller:
  steps:
    - text: "Hello there."
load: {kind: step, levels: [1, 2], step_s: 3}
"""


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_validate(path: Path) -> None:
    s = load_scenario(path)
    plan = s.load.plan()
    assert plan and all(c >= 1 and d > 0 for c, d in plan)
    assert sum(d for _, d in plan) < s.limits.max_duration_s  # the hard stop leaves room to finish


@pytest.mark.parametrize(
    "path", sorted(p for p in (REPO_ROOT / "configs" / "slo").glob("*.yaml") if p.name != "tts.yaml"), ids=lambda p: p.name
)
def test_shipped_slos_validate(path: Path) -> None:
    """The call load test's SLOs (tts.yaml is the TTS load test's: tests/loadtest/test_tts_loadtest.py)."""
    assert load_slo(path).voice_to_voice_p95_ms


def test_plans(tmp_path: Path) -> None:
    assert load_scenario(_write(tmp_path, GOOD)).load.plan() == [(1, 3.0), (2, 3.0)]
    linear = GOOD.replace("{kind: step, levels: [1, 2], step_s: 3}", "{kind: linear, start: 2, end: 4, ramp_s: 30}")
    assert load_scenario(_write(tmp_path, linear)).load.plan() == [(2, 10.0), (3, 10.0), (4, 10.0)]
    soak = GOOD.replace("{kind: step, levels: [1, 2], step_s: 3}", "{kind: soak, concurrency: 3, duration_s: 60}")
    assert load_scenario(_write(tmp_path, soak)).load.plan() == [(3, 60.0)]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (GOOD + "extra: 1\n", "extra: Extra inputs are not permitted"),
        (GOOD.replace("levels: [1, 2], ", ""), "load: load.kind step needs levels"),
        (GOOD.replace('- text: "Hello there."', "- {text: hi, silence_ms: 5}"), "exactly one of text, wav"),
        (GOOD.replace('- text: "Hello there."', "- {silence_ms: 5, barge_in_after_ms: 3}"), "barge_in_after_ms applies"),
        (GOOD.replace('- text: "Hello there."', "- {wav: nope.wav}"), "wav file not found: nope.wav"),
        (GOOD.replace("step_s: 3", "step_s: -1"), "load.step_s: Input should be greater than 0"),
        (GOOD.replace("kind: step", "kind: burst"), "load.kind: Input should be 'step', 'linear' or 'soak'"),
        ("name: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping"),
    ],
)
def test_bad_scenarios_fail_in_one_line(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario(_write(tmp_path, text))
    msg = str(err.value)
    assert expect in msg and "\n" not in msg and msg.startswith(str(tmp_path))


def test_bad_slo_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"voice_to_voice_p95_ms: Input should be greater than 0"):
        load_slo(_write(tmp_path, "voice_to_voice_p95_ms: -3\n"))
    with pytest.raises(ScenarioError, match=r"p95_ms: Extra inputs are not permitted"):
        load_slo(_write(tmp_path, "p95_ms: 3\n"))
    with pytest.raises(ScenarioError, match="cannot read"):
        load_slo(tmp_path / "missing.yaml")
