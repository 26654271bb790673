"""The TTS plugin on S2-Pro (the tiny fixture checkpoint) with a voice from our voice library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed (deploy/setup.sh installs it)")
pytest.importorskip("livekit.plugins.agent_runtime", reason="livekit-plugins-agent-runtime is not installed")

from livekit.plugins import agent_runtime

from agent_runtime.tts.s2pro.voices import VoiceLibrary

pytestmark = pytest.mark.slow


async def test_s2pro_voice_from_library_streams(s2pro_fixtures: Path, tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.add("alice", np.random.default_rng(0).integers(0, 32, size=(4, 12)), "A short reference transcript.")
    options = {
        "checkpoint": str(s2pro_fixtures / "tiny"),
        "codec": str(s2pro_fixtures / "codec_tiny.pth"),
        "codec_config": str(s2pro_fixtures / "codec_tiny.json"),
        "voice_library": str(tmp_path),
        "max_frames_per_segment": 4,
        "seed": 1,
    }
    plugin = agent_runtime.TTS(engine="s2pro", engine_options=options, voice="alice")
    try:
        assert plugin.sample_rate == 44_100 and plugin.model == "s2pro"
        with pytest.raises(ValueError, match="voice"):
            plugin.update_options(voice="nobody")
        assert plugin._speech_options.voice == "alice"  # a refused update changes nothing
        frames = []
        async with plugin.stream() as stream:
            stream.push_text("Hello from Alice, ")
            stream.push_text("how are you today?")
            stream.end_input()
            frames = [ev.frame async for ev in stream]
        pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
        assert pcm.size > 0 and np.abs(pcm).max() > 0
    finally:
        await plugin.aclose()
