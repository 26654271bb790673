"""Shared test fixtures: paths to the repository and to ../shared material."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
S2PRO_FIXTURES = SHARED_DIR / "fixtures" / "s2pro"


@pytest.fixture(scope="session")
def s2pro_fixtures() -> Path:
    if not S2PRO_FIXTURES.is_dir():
        pytest.skip(f"S2-Pro fixtures not found at {S2PRO_FIXTURES}")
    return S2PRO_FIXTURES


@pytest.fixture(scope="session")
def real_engines():
    from agent_runtime.engines import build_engines

    config = load_config(None, {"llm": {"max_tokens": 40}})
    engines = build_engines(config)
    engines.recognizer.warmup()
    engines.synthesizer.warmup()
    return engines


@pytest.fixture(scope="session")
def say(real_engines):
    """Text -> int16 16 kHz caller speech, synthesised with piper (cached per text)."""
    cache: dict[str, np.ndarray] = {}

    def _say(text: str) -> np.ndarray:
        if text not in cache:
            from agent_runtime.demo.run import synthesize_text

            cache[text] = asyncio.run(synthesize_text(real_engines.synthesizer, text))
        return cache[text]

    return _say
