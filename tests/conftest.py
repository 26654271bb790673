"""Shared test fixtures: paths to the repository and to ../shared material."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
S2PRO_FIXTURES = SHARED_DIR / "fixtures" / "s2pro"


@pytest.fixture(scope="session")
def s2pro_fixtures() -> Path:
    if not S2PRO_FIXTURES.is_dir():
        pytest.skip(f"S2-Pro fixtures not found at {S2PRO_FIXTURES}")
    return S2PRO_FIXTURES
