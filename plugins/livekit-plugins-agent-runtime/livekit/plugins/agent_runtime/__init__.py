"""agent-runtime engines as LiveKit Agents plugins.

- `TTS`: our streaming synthesizers (piper embedded by default, `s2pro` local, `remote` tts-serve):
  `stream()` takes the LLM's text deltas and speaks from the first clause, with our text chunker.
- `STT`: our faster-whisper recognizer (embedded `tiny.en`), non-streaming; `AgentSession` wraps it
  in LiveKit's VAD `stt.StreamAdapter` when given a VAD.
- `LLM`: any `agent_runtime.llm_backends` backend (the embedded SmolLM2 `local` one by default).

Importing this module registers `AgentRuntimePlugin` with LiveKit, as LiveKit's own plugins do.
"""

from livekit.agents import Plugin

from .llm import LLM, LLMStream, to_runtime_messages
from .log import logger
from .stt import STT
from .tts import TTS, ChunkedStream, SynthesizeStream
from .version import __version__

__all__ = [
    "LLM",
    "STT",
    "TTS",
    "ChunkedStream",
    "LLMStream",
    "SynthesizeStream",
    "__version__",
    "to_runtime_messages",
]


class AgentRuntimePlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__, logger)


Plugin.register_plugin(AgentRuntimePlugin())
