"""Piper's VITS graph cut in two, so a sentence's audio starts before all of it is decoded.

A piper voice is one ONNX graph: text encoder, duration predictor and flow turn phoneme ids into
latent frames (about 30 % of the time), then the HiFi-GAN decoder turns the frames into audio (about
70 %, `hop` samples a frame: 256 at 22.05 kHz, 11.6 ms). The decoder is convolutional, so an audio
frame depends only on the latent frames within its receptive field (10 either side for the medium
voices, measured). Decoding the latent in chunks with `CONTEXT_FRAMES` of context on each side gives
the whole-sentence audio to within float rounding (1e-6; `tests/tts/test_piper_split.py`), and the
first chunk exists after the front part and one small decode.

`load_split_graph` cuts the graph at the decoder's input with the `onnx` package and keeps the two
halves in a cache folder (`cache_dir()`), so only the first load of a voice pays for importing
onnx (about 1.2 s, most of it ml_dtypes) and the cut (0.4 s). A graph whose decoder it cannot find
(an export without scoped node names) gives None, remembered too, and the voice speaks whole
sentences as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONTEXT_FRAMES", "LARGEST_CHUNK_FRAMES", "SplitGraph", "SplitVoice", "cache_dir", "chunk_bounds",
    "load_split_graph", "split_voice_graph",
]  # fmt: skip

log = logging.getLogger(__name__)

CONTEXT_FRAMES = 12
"""Latent frames of context decoded on each side of a chunk and then dropped (the receptive field
is 10: with 8 the audio differs by 2e-3 of its peak, with 10 by 4e-6, with 12 by float rounding)."""
GROWTH = 4
"""Each chunk is this many times the previous one (fewer runs, less context decoded twice)."""
LARGEST_CHUNK_FRAMES = 384
"""Chunks grow from the first size up to this (4.5 s of audio), which bounds the memory of one
decoder run."""
_DECODER_SCOPE = "/dec/"
_DECODER_ENTRY = "/dec/conv_pre/"
_CACHE_FORMAT = 1
CACHE_ENV = "AGENT_RUNTIME_CACHE_DIR"


def cache_dir() -> Path:
    """Where derived model files are kept: `$AGENT_RUNTIME_CACHE_DIR`, else
    `$XDG_CACHE_HOME/agent-runtime`, else `~/.cache/agent-runtime`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "agent-runtime"


@dataclass(frozen=True, slots=True)
class SplitGraph:
    """The two halves of a voice graph, serialized for onnxruntime."""

    front: bytes
    """Phoneme ids (+ lengths, scales, speaker) -> the decoder's inputs."""
    decoder: bytes
    """The decoder's inputs -> audio."""
    latent: str
    """The decoder input that runs along time: (1, channels, frames)."""
    shared: tuple[str, ...]
    """Its other inputs (a speaker embedding), passed whole to every chunk."""
    output: str


def split_voice_graph(model_path: Path) -> SplitGraph | None:
    """Cut a piper voice graph at its decoder's input; None when the decoder is not recognised or
    the `onnx` package is missing (the caller then runs the whole graph)."""
    try:
        import onnx
        import onnx.utils
    except ImportError:
        log.info("piper: the onnx package is not installed; sentences are decoded whole (pip install onnx)")
        return None
    model = onnx.load(str(model_path))
    graph = model.graph
    decoder_nodes = [n for n in graph.node if n.name.startswith(_DECODER_SCOPE)]
    entry = [n for n in decoder_nodes if n.name.startswith(_DECODER_ENTRY)]
    if not entry:
        log.info("piper: %s has no recognisable decoder; sentences are decoded whole", model_path.name)
        return None
    produced = {out for n in decoder_nodes for out in n.output}
    weights = {init.name for init in graph.initializer}
    external: list[str] = []
    for node in decoder_nodes:
        for name in node.input:
            if name and name not in produced and name not in weights and name not in external:
                external.append(name)
    latent = entry[0].input[0]
    output = graph.output[0].name
    if latent not in external:
        return None
    extractor = onnx.utils.Extractor(model)
    inputs = [i.name for i in graph.input if i.name not in weights]
    try:
        front = extractor.extract_model(inputs, external)
        decoder = extractor.extract_model(external, [output])
    except Exception as exc:  # onnx raises several types for graphs it cannot cut
        log.info("piper: cannot split %s (%s); sentences are decoded whole", model_path.name, exc)
        return None
    shared = tuple(name for name in external if name != latent)
    return SplitGraph(front.SerializeToString(), decoder.SerializeToString(), latent, shared, output)


def load_split_graph(model_path: Path, cache: Path | None = None) -> SplitGraph | None:
    """`split_voice_graph(model_path)`, kept in `cache` (default `cache_dir()`) under a key of the
    model file's path, size and modification time. A cache that cannot be written is skipped."""
    stat = model_path.stat()
    key = hashlib.sha256(f"{_CACHE_FORMAT}|{model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    folder = (cache or cache_dir()) / "piper-split" / f"{model_path.stem}-{key[:16]}"
    cached = _read_cached(folder)
    if cached is not None:
        return cached or None
    graph = split_voice_graph(model_path)
    _write_cached(folder, graph)
    return graph


def _read_cached(folder: Path) -> SplitGraph | bool | None:
    """The cached graph, False if the voice is cached as not splittable, None if not cached."""
    try:
        meta = json.loads((folder / "split.json").read_text(encoding="utf-8"))
        if not meta.get("split"):
            return False
        return SplitGraph(
            (folder / "front.onnx").read_bytes(), (folder / "decoder.onnx").read_bytes(),
            str(meta["latent"]), tuple(meta["shared"]), str(meta["output"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cached(folder: Path, graph: SplitGraph | None) -> None:
    meta: dict[str, Any] = {"split": graph is not None}
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    except OSError as exc:
        log.debug("piper: cannot cache the split voice graph in %s: %s", folder, exc)
        return
    try:
        if graph is not None:
            (staging / "front.onnx").write_bytes(graph.front)
            (staging / "decoder.onnx").write_bytes(graph.decoder)
            meta |= {"latent": graph.latent, "shared": list(graph.shared), "output": graph.output}
        (staging / "split.json").write_text(json.dumps(meta), encoding="utf-8")
        staging.rename(folder)  # atomic: readers see all of it or nothing
    except OSError as exc:  # a full disk, or another process got there first
        log.debug("piper: split voice graph not cached in %s: %s", folder, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded


def chunk_bounds(frames: int, first: int, largest: int = LARGEST_CHUNK_FRAMES) -> Iterator[tuple[int, int]]:
    """[start, end) latent frames of each chunk: `first`, then `GROWTH` times larger up to `largest`."""
    start, size = 0, max(1, first)
    while start < frames:
        end = min(frames, start + size)
        yield start, end
        start, size = end, min(largest, size * GROWTH)


class SplitVoice:
    """Runs a `SplitGraph`: the front part once per sentence, the decoder chunk by chunk."""

    def __init__(self, graph: SplitGraph, front: Any, decoder: Any) -> None:
        """`front`, `decoder`: onnxruntime sessions of `graph.front` and `graph.decoder`."""
        self.graph = graph
        self.front = front
        self.decoder = decoder

    def synthesize(
        self,
        feeds: Mapping[str, np.ndarray],
        first_frames: int,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[np.ndarray]:
        """Raw audio (float32, unnormalised) of one sentence, chunk by chunk; stops early when
        `should_stop()` is true between two chunks."""
        names = [self.graph.latent, *self.graph.shared]
        values = self.front.run(names, dict(feeds))
        latent = values[0]
        shared = dict(zip(self.graph.shared, values[1:], strict=True))
        frames = int(latent.shape[-1])
        for start, end in chunk_bounds(frames, first_frames):
            if should_stop():
                return
            lo, hi = max(0, start - CONTEXT_FRAMES), min(frames, end + CONTEXT_FRAMES)
            window = np.ascontiguousarray(latent[..., lo:hi])
            audio = self.decoder.run([self.graph.output], {self.graph.latent: window, **shared})[0].reshape(-1)
            hop, rest = divmod(len(audio), hi - lo)
            if rest:
                raise RuntimeError(f"piper decoder gave {len(audio)} samples for {hi - lo} frames")
            yield audio[(start - lo) * hop : (end - lo) * hop].astype(np.float32, copy=False)
