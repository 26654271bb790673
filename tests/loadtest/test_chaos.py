"""`agent-runtime loadtest chaos`: the fault LLM over the wire, the plan, the verdict, the CLI, and short
campaigns against a real server (instant ASR/TTS): one that must hold and one that must be caught."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.errors import BackendError
from agent_runtime.llm.base import ChatMessage, GenerationOptions
from agent_runtime.llm.openai_compat import OpenAICompatBackend
from loadtest.chaos.fault_llm import NORMAL_REPLY, FaultLLMServer
from loadtest.chaos.plan import ChaosPlan, FaultLLM, load_plan
from loadtest.chaos.verdict import EXPECT, build
from loadtest.scenario import ScenarioError
from tests.conftest import REPO_ROOT

ATTACKS = set(EXPECT)


async def _ask(backend: OpenAICompatBackend, max_chars: int = 10_000) -> tuple[str, Exception | None]:
    out = ""
    try:
        async for delta in backend.stream_chat([ChatMessage("user", "hi")], GenerationOptions()):
            out += delta
            if len(out) >= max_chars:
                break
    except Exception as exc:
        return out, exc
    return out, None


def test_fault_llm_speaks_the_openai_stream_and_misbehaves_on_schedule() -> None:
    async def main() -> tuple[list[tuple[str, Exception | None]], list[dict[str, Any]]]:
        srv = FaultLLMServer(FaultLLM(schedule=["normal", "stall", "long", "garbage", "close"], stall_cap_s=0.3,
                                      long_chars=5_000))
        url = await srv.start()
        backend = OpenAICompatBackend(base_url=url + "/v1", model="chaos", timeout_s=5, idle_timeout_s=30)
        try:
            got = [await _ask(backend, max_chars=200 if i == 2 else 10_000) for i in range(5)]
            await asyncio.sleep(0.3)  # the long stream notices the client left
            return got, srv.as_json()
        finally:
            await backend.aclose()
            await srv.stop()

    got, reqs = asyncio.run(main())
    assert [r["behaviour"] for r in reqs] == ["normal", "stall", "long", "garbage", "close"]
    (normal, e0), (stall, e1), (long, e2), (garbage, e3), (close, e4) = got
    assert normal.strip() == NORMAL_REPLY and e0 is None and reqs[0]["finished"]
    assert stall.startswith("Let me check") and e1 is None and reqs[1]["finished"]  # resumed after its cap
    assert e2 is None and 200 <= len(long) < 400 and "." not in long and "," not in long
    assert reqs[2]["client_left"] and reqs[2]["chars_sent"] < 5_000  # the client's early close was seen
    # garbage and a dropped connection: the runtime's backend turns both into one-line BackendErrors
    assert isinstance(e3, BackendError) and "malformed stream" in str(e3) and garbage.startswith("Let me")
    assert isinstance(e4, BackendError) and close.startswith("Let me")


def test_plan_is_strict_and_duration_overrides(tmp_path: Path) -> None:
    plan = load_plan(REPO_ROOT / "configs" / "scenarios" / "chaos" / "default.yaml", duration_s=12)
    assert plan.duration_s == 12 and plan.legit.quiet_s > 1.0 and len(plan.fault_llm.schedule) == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("squatters: {sockets: 3, linger: 1}\n")
    with pytest.raises(ScenarioError, match=r"squatters\.linger: unknown key"):
        load_plan(bad)


def _raw() -> dict[str, Any]:
    """A campaign result in which everything held."""
    probes = [{"attack": a, "case": "c", "outcome": "as expected", "ok": True, "t": 1.0, "detail": ""}
              for a in ATTACKS]
    reqs = [{"n": 0, "behaviour": "normal", "chars_sent": 40, "finished": True, "client_left": False,
             "left_after_s": None, "stream": True},
            {"n": 1, "behaviour": "stall", "chars_sent": 20, "finished": False, "client_left": True,
             "left_after_s": 1.0, "stream": True},
            {"n": 2, "behaviour": "long", "chars_sent": 320, "finished": False, "client_left": True,
             "left_after_s": 0.0, "stream": True}]
    return {
        "url": "http://127.0.0.1:1", "pid": 1, "ran_s": 20.0, "stopped_early": "", "harness_errors": [],
        "config": {"llm": {"inter_token_timeout_s": 1.0, "max_reply_chars": 300}},
        "legit": {"attempted": 3, "completed": 3, "lost": 0, "lost_by_status": {}, "calls": []},
        "probes": probes,
        "llm": {"counts": {"normal": 1, "stall": 1, "long": 1}, "requests": reqs, "stall_cap_s": 20, "long_chars": 20000},
        "recovery": {"recovered": True, "waited_s": 0.5, "last": {"sessions": 0, "pending": 0, "pending_metric": 0}},
        "health": {"ok": 40, "failed": 0, "failures": [], "alive": True},
        "rss_mb": {"before": 150.0, "after": 160.0, "samples": [[1.0, 150.0], [2.0, 158.0], [3.0, 160.0]]},
        "tracebacks": [], "stderr": "server-stderr.log",
    }


def _breaks(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    *keys, last = path.split(".")
    node: Any = out
    for k in keys:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(last) if last.isdigit() else last] = value
    return out


@pytest.mark.parametrize(("path", "value", "check"), [
    ("legit.lost", 1, "no_legit_call_lost"),
    ("legit.attempted", 0, "no_legit_call_lost"),
    ("recovery.recovered", False, "slots_recovered"),
    ("health.failed", 1, "server_stayed_up"),
    ("health.alive", False, "server_stayed_up"),
    ("tracebacks", ["x | RuntimeError: boom"], "no_tracebacks"),
    ("rss_mb.after", 450.0, "rss_growth_bounded"),  # over the whole-run budget
    ("rss_mb.samples.1.1", 100.0, "rss_growth_bounded"),  # within budget, but still climbing in the second half
    ("probes.0.ok", False, "attacks_as_expected"),
    ("probes", [], "attacks_as_expected"),
    ("llm.requests.1.left_after_s", 9.0, "llm_faults_handled"),  # a stall the runtime did not cut
    ("llm.requests.2.client_left", False, "llm_faults_handled"),  # a runaway reply read to the end
    ("llm.requests.2.chars_sent", 5_000, "llm_faults_handled"),  # read far past llm.max_reply_chars
    ("llm.counts.stall", 0, "llm_faults_handled"),
    ("harness_errors", ["squatters: OSError"], "harness_ok"),
])
def test_verdict_fails_on_each_broken_check(path: str, value: Any, check: str) -> None:
    plan = ChaosPlan()
    held = build(_raw(), plan, "test")
    assert held["verdict"]["ok"], held["checks"]
    broken = build(_breaks(_raw(), path, value), plan, "test")
    assert not broken["verdict"]["ok"] and check in broken["verdict"]["failed"]


def test_cli_chaos_needs_its_own_server_and_loadtest_still_needs_a_scenario(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "agent_runtime.cli", "loadtest"]
    chaos = subprocess.run([*base, "chaos", "--url", "http://127.0.0.1:9", "--out", str(tmp_path)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert chaos.returncode == 2 and "give --start-server" in chaos.stderr
    plain = subprocess.run([*base, "--url", "http://127.0.0.1:9", "--out", str(tmp_path)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and "--scenario FILE is required" in plain.stderr


def _campaign(tmp_path: Path, plan: str, duration: float) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    (tmp_path / "chaos.yaml").write_text(plan)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "agent_runtime.cli", "loadtest", "chaos", "--start-server", "--instant-engines",
           "--scenario", str(tmp_path / "chaos.yaml"), "--duration", str(duration), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert (out / "chaos.json").exists(), proc.stdout + proc.stderr
    return proc, json.loads((out / "chaos.json").read_text())


@pytest.mark.slow
def test_a_short_campaign_runs_every_attack_and_the_server_holds(tmp_path: Path) -> None:
    plan = (REPO_ROOT / "configs" / "scenarios" / "chaos" / "default.yaml").read_text()
    proc, doc = _campaign(tmp_path, plan, 20)
    assert doc["schema"] == "agent-runtime-chaos/1"
    assert set(doc["attacks"]) == ATTACKS
    for name, attack in doc["attacks"].items():
        assert attack["executed"] > 0, name  # every attack really ran
    assert all(n > 0 for n in doc["llm"]["counts"].values()), doc["llm"]["counts"]  # every LLM fault was served
    assert doc["legit"]["attempted"] >= 2
    assert set(doc["checks"]) >= {"no_legit_call_lost", "slots_recovered", "server_stayed_up", "no_tracebacks",
                                  "rss_growth_bounded", "attacks_as_expected", "llm_faults_handled"}
    failed = {k: c["detail"] for k, c in doc["checks"].items() if not c["ok"]}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-2000:])
    assert "CHAOS: SERVER HELD" in proc.stdout


WEAK = """
name: weak-server
legit: {concurrency: 2, turns: 1, call_timeout_s: 15, reply_wait_s: 6}
server: {max_sessions: 1}
llm: {inter_token_timeout_s: 30, max_reply_chars: 30000}
fault_llm: {schedule: [stall, long]}
"""


@pytest.mark.slow
def test_a_weak_server_is_caught(tmp_path: Path) -> None:
    """One call slot and no stall/length guard: legit calls are lost and the LLM faults get through."""
    proc, doc = _campaign(tmp_path, WEAK, 12)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert {"no_legit_call_lost", "llm_faults_handled"} <= set(doc["verdict"]["failed"])
    assert "CHAOS: FAILED" in proc.stdout


def test_compare_pipecat_without_its_venv_stops_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing .venv-pipecat is reported at once, not after the agent-runtime half ran for minutes."""
    from agent_runtime.cli import build_parser
    from loadtest import server as srv

    monkeypatch.setattr(srv, "pipecat_python", lambda: tmp_path / ".venv-pipecat" / "bin" / "python")

    async def no_server(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a server was started")

    monkeypatch.setattr(srv, "start_llm_server", no_server)
    monkeypatch.setattr(srv, "start_runtime", no_server)
    args = build_parser().parse_args(["loadtest", "--compare-pipecat", "--scenario",
                                      str(REPO_ROOT / "configs/scenarios/compare-v2v.yaml"), "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "no .venv-pipecat: run bash loadtest/peers/setup_pipecat.sh first" in capsys.readouterr().err
