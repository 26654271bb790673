"""Where S2-Pro runs: the seam between the synthesizer and a backend.

`S2ProSynthesizer` does what is the same for every backend (options, text chunking, the streaming
contract); a backend turns one reply's segments into audio. Backends:

* `local` (`local_backend.LocalBackend`): the Dual-AR engine and the streaming codec in this
  process, on its model thread.
* `remote`: speech servers instead of this process: `tts.engine: s2pro` with `backend: remote`
  builds the `remote` engine (`agent_runtime.tts.remote`) from the other options: `agent-runtime
  tts-serve` over its WebSocket stream (the server keeps the KV continuation across segments) or an
  sglang-omni deployment (`protocol: sglang-omni`: one streaming `/v1/audio/speech` request per
  segment, no continuation across requests).

A backend's utterance is an `AsyncUtteranceSynth`: the runtime awaits its audio on the event loop
and never spends a thread per reply on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from agent_runtime.tts.base import AsyncUtteranceSynth


class S2ProBackend(ABC):
    """A place that speaks S2-Pro: loaded once, shared by every session's replies."""

    name: str = "s2pro-backend"

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Rate of the audio blocks the utterances yield (the codec's: 44.1 kHz for S2-Pro)."""

    @abstractmethod
    def open_utterance(self) -> AsyncUtteranceSynth:
        """Per-reply state (cheap; called on the event loop)."""

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run once so the first reply pays no lazy initialisation (blocking)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models, threads or connections."""

    def describe(self) -> dict[str, Any]:
        """A few facts for logs and `synth` output."""
        return {"backend": self.name, "sample_rate": self.sample_rate}


BACKENDS = ("local", "remote")
"""Backend names `tts.options.backend` accepts."""
