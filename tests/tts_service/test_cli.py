"""`agent-runtime tts-serve`'s command line."""

from __future__ import annotations

import aiohttp
import pytest

from agent_runtime.cli import build_parser
from agent_runtime.tts_service.protocol import INFO_PATH
from tests.tts_service.conftest import serving


def test_help_explains_the_service(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["tts-serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for words in ("/v1/audio/speech", "/v1/audio/stream", "/readyz", "/metrics", "--max-streams", "--config",
                  "AGENT_RUNTIME_TTS_TOKEN", "SIGTERM", "example:", "tts-serve listening on", "engine: remote"):
        assert words in out, words


def test_flags_override_the_config(monkeypatch, tmp_path):
    import agent_runtime.commands.tts_serve as cmd

    seen = {}

    async def fake_serve(config, **_):
        seen["config"] = config
        return 0

    monkeypatch.setattr(cmd, "tts_serve", fake_serve)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tts_server:\n  max_streams: 5\n  port: 9999\ntts:\n  engine: piper\n")
    args = build_parser().parse_args(["tts-serve", "--config", str(cfg), "--port", "0", "--host", "127.0.0.2",
                                      "--max-streams", "2"])
    assert args.func(args) == 0
    s = seen["config"].tts_server
    assert (s.port, s.host, s.max_streams) == (0, "127.0.0.2", 2)
    args = build_parser().parse_args(["tts-serve", "--config", str(cfg)])
    args.func(args)
    assert (seen["config"].tts_server.port, seen["config"].tts_server.max_streams) == (9999, 5)


async def test_info_names_the_options_piper_honours(piper_voice):
    async with serving(piper_voice, engine="piper") as srv, aiohttp.ClientSession() as http, \
            http.get(srv.url + INFO_PATH) as r:
        info = await r.json()
    assert info["engine"] == "piper" and info["sample_rate"] == piper_voice.sample_rate
    assert info["options"] == ["speed", "voice"]
