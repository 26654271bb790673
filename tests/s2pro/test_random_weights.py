"""`tts.options.checkpoint: random:<preset>[:SEED]` and `codec: random:<spec>`: S2-Pro shapes with random
weights behind the real synthesizer (how `bench tts-wire` and `tts-serve` measure S2-Pro without the
9 GB checkpoint). The speech is noise, but it is made by the real engines, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.synthesizer import S2ProSynthesizer


def _speak(synth: S2ProSynthesizer, text: str) -> np.ndarray:
    utterance = synth.open_utterance()
    return np.concatenate(list(utterance.synthesize(text)))  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine", ["single", "pooled"])
def test_a_random_tiny_model_speaks_through_both_engines(s2pro_fixtures: Path, engine: str) -> None:
    synth = S2ProSynthesizer.from_options(
        checkpoint="random:tiny:3", codec=f"random:{s2pro_fixtures / 'codec_tiny.json'}", engine=engine,
        max_streams=2, max_len=1024, seed=1,
    )  # fmt: skip
    try:
        synth.warmup()
        audio = _speak(synth, "Hello there, this is a test.")
        again = _speak(synth, "Hello there, this is a test.")
    finally:
        synth.close()
    assert audio.dtype == np.float32 and len(audio) > 0 and np.isfinite(audio).all()  # a random model may end early
    np.testing.assert_array_equal(audio, again)  # seeded sampling, seeded weights: reproducible


@pytest.mark.parametrize(
    ("checkpoint", "codec", "message"),
    [
        ("random:huge", "random:full", "random:<s2pro|tiny>"),
        ("random:tiny:x", "random:full", "random:<s2pro|tiny>"),
        ("random:tiny", "random:nowhere.json", "random:full, random:mid or random:<codec-config.json>"),
    ],
)
def test_bad_random_specs_are_config_errors(checkpoint: str, codec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        S2ProSynthesizer.from_options(checkpoint=checkpoint, codec=codec)
