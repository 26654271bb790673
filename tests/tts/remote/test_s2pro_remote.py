"""The tiny S2-Pro fixture spoken through `tts-serve` equals the same engine in process."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer
from agent_runtime.tts.s2pro.chunking import S2ProTextChunker
from tests.conftest import REPO_ROOT
from tests.tts.remote.conftest import REPLY_DELTAS, S2PRO_OPTIONS, speak


@pytest.fixture(scope="module")
def local_s2pro():
    from agent_runtime.tts.s2pro.synthesizer import S2ProSynthesizer

    options = {k: str(REPO_ROOT / v) if isinstance(v, str) else v for k, v in S2PRO_OPTIONS.items()}
    synth = S2ProSynthesizer.from_options(**options)
    yield synth
    synth.close()


@pytest.mark.slow
def test_s2pro_over_remote_equals_local(s2pro_server, local_s2pro) -> None:
    async def main() -> None:
        remote = RemoteSynthesizer([s2pro_server.url], first_audio_timeout_s=60, read_timeout_s=60)
        assert remote.engine == "s2pro" and remote.sample_rate == local_s2pro.sample_rate
        assert remote.chunker_class is S2ProTextChunker  # the client's copy of the server's chunker
        try:
            got = await speak(remote, REPLY_DELTAS[:3])
        finally:
            await remote.aclose()
        want = await speak(local_s2pro, REPLY_DELTAS[:3])
        assert [t for t, _ in got] == [t for t, _ in want]
        assert len(want) >= 2
        for (text, a), (_, b) in zip(got, want, strict=True):
            assert len(a) > 0, text
            assert np.array_equal(a, b), text

    asyncio.run(main())
