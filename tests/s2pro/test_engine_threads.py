"""The engine's model thread runs torch with the configured intra-op thread count (issue 11).

OpenMP thread counts belong to the calling thread, so the count set by a CLI or by the loading code
on the main thread is not what the `s2pro-engine` worker computes with unless the worker sets it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.engine import S2ProEngine
from agent_runtime.tts.s2pro.random_model import SyntheticTokenizer
from agent_runtime.tts.s2pro.synthesizer import load_local

from .test_dual_ar_engine import make_config, make_model


def new_engine(**kwargs) -> S2ProEngine:
    model = make_model(make_config(), torch.float32)
    return S2ProEngine(model, SyntheticTokenizer(model.cfg.semantic_begin_id, model.cfg.codebook_size), **kwargs)


def worker_threads(engine: S2ProEngine) -> int:
    """`torch.get_num_threads()` read on the engine's model thread."""
    return engine.scheduler.submit(torch.get_num_threads).result()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_worker_uses_the_configured_thread_count(threads: int) -> None:
    main_before = torch.get_num_threads()  # 1: the S2-Pro tests' conftest
    engine = new_engine(threads=threads)
    try:
        assert engine.threads == threads
        assert worker_threads(engine) == threads
        assert torch.get_num_threads() == main_before  # the loading thread keeps its own count
    finally:
        engine.close(wait=True)


def test_zero_means_the_loading_threads_count_at_load_time() -> None:
    torch.set_num_threads(2)  # what a CLI's --threads 2 does on the main thread before loading
    engine = new_engine()
    torch.set_num_threads(1)  # changed after loading: the engine keeps the count it was loaded with
    try:
        assert engine.threads == 2
        assert worker_threads(engine) == 2
    finally:
        engine.close(wait=True)


def test_bad_thread_counts_are_refused() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            new_engine(threads=bad)


def test_load_local_threads_option(s2pro_fixtures: Path) -> None:
    """`threads` in the s2pro TTS options reaches the model thread, which also runs the codec."""
    fx = s2pro_fixtures
    backend = load_local(fx / "tiny", fx / "codec_tiny.pth", fx / "codec_tiny.json", threads=2, max_frames_per_segment=3)
    try:
        assert backend.engine.threads == 2  # type: ignore[attr-defined]
        seen = []
        codec = backend.codec  # type: ignore[attr-defined]
        decode = codec.decode

        def spy(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return decode(*args, **kwargs)

        codec.decode = spy
        backend.warmup()
        assert seen and set(seen) == {2}  # codec chunks decoded on the model thread, with 2 threads
    finally:
        backend.close()
