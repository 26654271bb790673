"""deploy/: every YAML parses; the commands are real `agent-runtime` subcommands with real flags; the
probe and healthcheck paths are routes of the server each runs; embedded configs load; the HPA's
metrics are gauges the servers export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent_runtime.cli import build_parser
from agent_runtime.config import AppConfig
from agent_runtime.tts_service import protocol

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SERVER_SOURCES = {
    "serve": "agent_runtime/server/app.py",
    "tts-serve": "agent_runtime/tts_service/server.py",
    "llm-serve": "agent_runtime/llm/server.py",
}


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def routes(sub: str) -> set[str]:
    text = (REPO / SERVER_SOURCES[sub]).read_text()
    out = set()
    for lit, const in re.findall(r'add_(?:get|post|route\("[A-Z]+",)\s*\(?\s*(?:"([^"]+)"|([A-Z_]+))', text):
        out.add(lit or getattr(protocol, const))
    return out


def _commands() -> list[tuple[str, list[str], list[str]]]:
    """(where, argv, probe paths) for every container / compose service."""
    found = []
    compose = DEPLOY / "compose.yaml"
    for name, svc in (_docs(compose)[0].get("services") or {}).items():
        argv = svc.get("command") or []
        hc = " ".join((svc.get("healthcheck") or {}).get("test") or [])
        paths = re.findall(r"http://127\.0\.0\.1:\d+(/[\w/]+)", hc)
        found.append((f"compose {name}", argv, paths))
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _docs(path):
            spec = (doc.get("spec") or {}).get("template", {}).get("spec")
            if not spec:
                continue
            for c in spec["containers"]:
                probes = [c.get(k) for k in ("readinessProbe", "livenessProbe", "startupProbe") if c.get(k)]
                paths = [p["httpGet"]["path"] for p in probes if "httpGet" in p]
                found.append((f"{path.name} {doc['metadata']['name']}/{c['name']}",
                              list(c.get("command") or []) + list(c.get("args") or []), paths))
    return found


def test_every_yaml_parses():
    files = _yaml_files()
    assert DEPLOY / "compose.yaml" in files and len(list((DEPLOY / "k8s").glob("*.yaml"))) >= 4
    for f in files:
        assert _docs(f), f"{f} is empty"


@pytest.mark.parametrize("where,argv,paths", _commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_commands_and_probes_are_real(where, argv, paths):
    assert argv[:1] == ["agent-runtime"], f"{where}: runs {argv[:1]}"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{' '.join(argv)}` is not a valid agent-runtime command line")
    sub = argv[1]
    assert sub in SERVER_SOURCES and getattr(args, "func", None) is not None
    assert paths, f"{where}: no health probe"
    known = routes(sub)
    for p in paths:
        assert p in known, f"{where}: {p} is not a route of `agent-runtime {sub}` ({sorted(known)})"


def test_embedded_configs_load():
    configs = [yaml.safe_load(c["content"]) for c in _docs(DEPLOY / "compose.yaml")[0]["configs"].values()]
    for doc in _docs(DEPLOY / "k8s" / "configmap.yaml"):
        configs += [yaml.safe_load(v) for k, v in doc["data"].items() if k.endswith(".yaml")]
    assert len(configs) >= 4
    for c in configs:
        AppConfig.model_validate(c)


def test_hpa_metrics_are_exported_gauges():
    from agent_runtime.server.metrics import ServerMetrics
    from agent_runtime.tts_service.metrics import TTSServiceMetrics

    exported = ServerMetrics().render() + TTSServiceMetrics().render()
    names = [m["pods"]["metric"]["name"] for d in _docs(DEPLOY / "k8s" / "hpa.yaml") for m in d["spec"]["metrics"]]
    assert set(names) == {"agent_active_sessions", "tts_active_streams"}
    for n in names:
        assert f"# TYPE {n} gauge" in exported, n


def test_grace_periods_cover_drain():
    """terminationGracePeriodSeconds / stop_grace_period exceed the servers' shutdown_grace_s."""
    cm = _docs(DEPLOY / "k8s" / "configmap.yaml")[0]["data"]
    grace = {"call-worker": yaml.safe_load(cm["call.yaml"])["server"]["shutdown_grace_s"],
             "tts": yaml.safe_load(cm["tts.yaml"])["tts_server"]["shutdown_grace_s"]}
    for name, file in (("call-worker", "call-worker.yaml"), ("tts", "tts-serve.yaml")):
        dep = next(d for d in _docs(DEPLOY / "k8s" / file) if d["kind"] == "Deployment")
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace[name]
    compose = _docs(DEPLOY / "compose.yaml")[0]
    cfg = {k: yaml.safe_load(v["content"]) for k, v in compose["configs"].items()}
    assert int(compose["services"]["call"]["stop_grace_period"][:-1]) > cfg["call.yaml"]["server"]["shutdown_grace_s"]
    assert int(compose["services"]["tts"]["stop_grace_period"][:-1]) > cfg["tts.yaml"]["tts_server"]["shutdown_grace_s"]
