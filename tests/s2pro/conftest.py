"""S2-Pro tests run torch on one thread: CPU bit-exactness (and the fixtures' expected outputs) is
defined for OMP_NUM_THREADS=1, and it keeps timings steady on a shared machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
