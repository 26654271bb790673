"""The `local` S2-Pro backend: the Dual-AR engine and the streaming codec in this process.

Placement. Every tensor operation runs on the engine's one model thread (`S2ProEngine.scheduler`):
opening a reply's stream (voice prefix from the prefix cache), each frame step, and each codec
chunk. Nothing blocks the event loop and no thread is held per reply: a segment is a chain of jobs
on the model thread's queue, each completion submitting the next job from the model thread itself
(a future callback), so the chain does not wait for the event loop either. Audio blocks are handed
to the loop with `call_soon_threadsafe`.

Sharing and batching. Many replies (of many sessions) share the engine: each owns an `S2ProStream`
(its KV cache, sampler state and random generator) and a `CodecStreamDecoder`. The model thread
drains its queue in rounds: the pending calls (stream openings, codec chunks) first, then every
pending frame step, one per active segment, in the scheduler's `_run_steps`, which batches the
decode steps into one forward (`batch_decode`, on by default on CUDA). On CPU they run one after
another by default, which keeps each stream bit-exact and independent of how many others run
(same seed, same audio). Codec chunks run before the next round of steps, so a finished chunk is
never kept waiting behind other streams' frames.

One reply = one utterance: its segments continue the same stream (previous codes stay in the
context, KV reused), and its codec decoder carries its state across segments, so the audio of the
reply is one continuous decode. At a segment end the decoder is flushed, so every segment's audio
is complete before the next segment's begins (segment boundaries map to audio exactly).

Bounds. A segment generates at most `LocalSettings.frame_cap(text)` frames (proportional to its
text, never more than `MAX_SEGMENT_FRAMES`), and a reply's context restarts from the voice prefix
(plus the last segment) before it passes `max_context` positions, so the memory of a reply (KV
cache, context) is bounded whatever its length.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import queue
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent_runtime.errors import ConfigError
from agent_runtime.tts.base import AsyncUtteranceSynth, SpeechOptions, UnsupportedSpeechOption, VoiceSample
from agent_runtime.tts.s2pro.backend import S2ProBackend
from agent_runtime.tts.s2pro.chunking import SPEAKER_TAG
from agent_runtime.tts.s2pro.codec import S2ProCodec
from agent_runtime.tts.s2pro.engine import CONTEXT_RESERVE, S2ProEngine, S2ProStream
from agent_runtime.tts.s2pro.prompt import VoiceReference
from agent_runtime.tts.s2pro.sampling import SamplingParams
from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder

log = logging.getLogger(__name__)

_END = object()
_TAG = re.compile(r"\[[^\]]*\]|<\|[^|]*\|>")
DEFAULT_PARAMS = SamplingParams(temperature=0.8, top_p=0.8, top_k=30)  # as the fixtures and benchmarks
# Frames one segment may take by default (~95 s of audio): the room the engine always keeps free
# after a prompt, far above what a capped segment (300 characters) speaks.
MAX_SEGMENT_FRAMES = CONTEXT_RESERVE
DEFAULT_MAX_CONTEXT = 8192
# Per-stream `SpeechOptions` the local backend honours (`LocalBackend.open_utterance_for`).
SPEECH_OPTIONS = frozenset({"voice", "references", "temperature", "top_p", "top_k", "seed", "max_new_tokens"})
REFUSED_OPTIONS = {
    "repetition_penalty": "S2-Pro samples with RAS (repetition-aware sampling: a recent semantic token is "
    "redrawn at a higher temperature), not with a repetition penalty",
    "speed": "S2-Pro has no speaking-rate control (the rate follows the voice reference)",
}
VOICE_CACHE_SIZE = 64  # library voices and audio references kept loaded / encoded


@dataclass(frozen=True)
class LocalSettings:
    """Per-reply generation settings of the local backend."""

    params: SamplingParams = DEFAULT_PARAMS
    seed: int | None = None
    """None: a fresh random seed per reply; an int: every reply starts from this seed (reproducible)."""
    first_chunk_frames: int = 2
    """Frames in the first codec chunk of a reply (1 frame = 46.4 ms of S2-Pro audio)."""
    chunk_frames: int = 8
    """Frames per later codec chunk."""
    max_frames_per_segment: int | None = None
    """Generation cap per segment (the reference's max_new_tokens). None: 64 + 6 per character of
    text (tags excluded), far above real speech, at most `MAX_SEGMENT_FRAMES`; 0: up to the
    context end."""
    max_context: int | None = DEFAULT_MAX_CONTEXT
    """Positions a reply's context may reach before it restarts from the voice prefix (plus the
    last segment); bounds the KV cache of one reply. None: the model's max_seq_len - 2048."""

    def __post_init__(self) -> None:
        if self.first_chunk_frames < 1 or self.chunk_frames < 1:
            raise ConfigError("s2pro: first_chunk_frames and chunk_frames must be >= 1")
        if self.max_frames_per_segment is not None and self.max_frames_per_segment < 0:
            raise ConfigError("s2pro: max_frames_per_segment must be >= 0")
        if self.max_context is not None and self.max_context < 256:
            raise ConfigError(f"s2pro: max_context must be >= 256 positions, got {self.max_context}")

    def frame_cap(self, text: str) -> int:
        if self.max_frames_per_segment is not None:
            return self.max_frames_per_segment
        return min(64 + 6 * len(_TAG.sub("", text)), MAX_SEGMENT_FRAMES)


class LocalBackend(S2ProBackend):
    """The Dual-AR engine + codec in process; see the module doc for placement and batching."""

    name = "local"

    def __init__(
        self,
        engine: S2ProEngine,
        codec: S2ProCodec,
        voice: VoiceReference | None = None,
        settings: LocalSettings | None = None,
        voice_library: str | Path | None = None,
    ) -> None:
        """`voice_library`: where per-stream `voice` options are looked up (None: the default
        library, `$AGENT_RUNTIME_VOICES` or ~/.local/share/agent-runtime/voices)."""
        cfg = engine.cfg
        if codec.num_codebooks != cfg.num_codebooks:
            raise ConfigError(
                f"s2pro: the codec has {codec.num_codebooks} codebooks, the Dual-AR model {cfg.num_codebooks}"
            )
        if voice is not None and any(c.shape[0] != cfg.num_codebooks for c in voice.codes):
            raise ConfigError(f"s2pro: the voice's codes do not have the model's {cfg.num_codebooks} codebooks")
        self.engine = engine
        self.codec = codec
        self.voice = voice
        self.settings = settings or LocalSettings()
        q = codec.config.quantizer
        sizes = [q.semantic_codebook_size] + [q.residual_codebook_size] * (codec.num_codebooks - 1)
        self._code_max = np.asarray(sizes, dtype=np.int64) - 1
        self.clamped_frames = 0  # frames with a code beyond the codec's codebook (random weights)
        self.voice_library = voice_library
        # library voices by name, audio references' codes by content: both bounded LRU caches
        self._voices: collections.OrderedDict[str, VoiceReference] = collections.OrderedDict()
        self._encoded: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self.references_encoded = 0  # audio references run through the codec (cache misses)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def open_utterance(self) -> LocalUtterance:
        return LocalUtterance(self)

    def open_utterance_for(self, options: SpeechOptions) -> LocalUtterance:
        """An utterance with per-stream `options` (on the event loop: no model work here).

        `voice`: a voice-library name (loaded once, then cached); `references`: voice samples to
        clone, from their codes (`vq_codes`) or their audio (encoded with the codec on the model
        thread when the first segment opens, then cached by content); `temperature` / `top_p` /
        `top_k`: sampling; `seed`; `max_new_tokens`: the frame cap of each segment. Another field,
        or a value the backend cannot use, raises `UnsupportedSpeechOption`. Nothing of the
        backend changes: the next stream without options gets the configured voice and settings.
        """
        for name, reason in REFUSED_OPTIONS.items():
            if getattr(options, name) is not None:
                raise UnsupportedSpeechOption(name, reason)
        options.refuse_unsupported(SPEECH_OPTIONS, "s2pro")
        settings = self._settings_for(options)
        if options.voice is not None and options.references is not None:
            raise UnsupportedSpeechOption("references", "give either a voice name or references, not both")
        voice = self.voice
        audio_refs: list[tuple[int, np.ndarray, int]] = []
        if options.voice is not None:
            voice = self._library_voice(options.voice)
        elif options.references is not None:
            voice, audio_refs = self._reference_voice(options.references)
        return LocalUtterance(self, settings=settings, voice=voice, audio_refs=audio_refs)

    def _settings_for(self, options: SpeechOptions) -> LocalSettings:
        s = self.settings
        p = s.params
        for name, kind in (("temperature", float), ("top_p", float), ("top_k", int)):
            value = getattr(options, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or (kind is int and int(value) != value)):
                raise UnsupportedSpeechOption(name, f"must be a{'n integer' if kind is int else ' number'}, got {value!r}")
        if options.top_k is not None and options.top_k < 1:
            raise UnsupportedSpeechOption("top_k", f"must be >= 1, got {options.top_k!r}")
        try:
            params = SamplingParams(
                float(p.temperature if options.temperature is None else options.temperature),
                float(p.top_p if options.top_p is None else options.top_p),
                int(p.top_k if options.top_k is None else options.top_k),
            )
        except ValueError as exc:
            field = next((f for f in ("temperature", "top_p", "top_k") if str(exc).startswith(f)), "temperature")
            raise UnsupportedSpeechOption(field, str(exc)) from None
        changes: dict[str, Any] = {}
        if params != p:
            changes["params"] = params
        if options.seed is not None:
            if isinstance(options.seed, bool) or not isinstance(options.seed, int) or options.seed < 0:
                raise UnsupportedSpeechOption("seed", f"must be a non-negative integer, got {options.seed!r}")
            changes["seed"] = options.seed
        if options.max_new_tokens is not None:
            n = options.max_new_tokens
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEGMENT_FRAMES:
                raise UnsupportedSpeechOption(
                    "max_new_tokens", f"must be an integer from 1 to {MAX_SEGMENT_FRAMES} (frames), got {n!r}"
                )
            changes["max_frames_per_segment"] = n
        return replace(s, **changes) if changes else s

    def _library_voice(self, name: str) -> VoiceReference:
        """Library voice `name`, read once (a small file read), then from the cache."""
        with self._cache_lock:
            if name in self._voices:
                self._voices.move_to_end(name)
                return self._voices[name]
        try:
            voice = load_voice(name, self.voice_library)
        except ConfigError as exc:
            raise UnsupportedSpeechOption("voice", str(exc).removeprefix("s2pro: ")) from None
        assert voice is not None
        n_cb = self.engine.cfg.num_codebooks
        if any(c.shape[0] != n_cb or c.min() < 0 or c.max() >= self.engine.cfg.codebook_size for c in voice.codes):
            raise UnsupportedSpeechOption("voice", f"voice {name!r} was not encoded for this model ({n_cb} codebooks)")
        with self._cache_lock:
            self._voices[name] = voice
            while len(self._voices) > VOICE_CACHE_SIZE:
                self._voices.popitem(last=False)
        return voice

    def _reference_voice(
        self, references: tuple[VoiceSample, ...]
    ) -> tuple[VoiceReference | None, list[tuple[int, np.ndarray, int]]]:
        """The voice of `references`: built now when every sample has codes; otherwise the audio
        samples to encode on the model thread (index, audio, rate)."""
        if not references:
            raise UnsupportedSpeechOption("references", "is empty (give at least one reference)")
        cfg = self.engine.cfg
        texts: list[str] = []
        codes: list[np.ndarray | None] = []
        audio_refs: list[tuple[int, np.ndarray, int]] = []
        for i, ref in enumerate(references):
            if not isinstance(ref, VoiceSample) or not isinstance(ref.text, str):
                raise UnsupportedSpeechOption("references", f"reference #{i} is not a voice sample with a text")
            texts.append(ref.text)
            if ref.codes is not None:
                arr = np.asarray(ref.codes)
                if arr.ndim != 2 or arr.shape[0] != cfg.num_codebooks or arr.shape[1] == 0:
                    raise UnsupportedSpeechOption(
                        "references", f"reference #{i}: codes of shape {arr.shape}, the model takes "
                        f"({cfg.num_codebooks} codebooks, frames)"
                    )
                if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= cfg.codebook_size:
                    raise UnsupportedSpeechOption(
                        "references", f"reference #{i}: codes must be integers in [0, {cfg.codebook_size})"
                    )
                codes.append(arr.astype(np.int64))
            elif ref.audio is not None:
                audio = np.asarray(ref.audio)
                rate = ref.sample_rate
                if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
                    raise UnsupportedSpeechOption("references", f"reference #{i}: audio without a sample rate")
                if audio.ndim != 1 or audio.size == 0 or not np.issubdtype(audio.dtype, np.floating):
                    raise UnsupportedSpeechOption("references", f"reference #{i}: audio must be float mono samples")
                audio_refs.append((i, audio, rate))
                codes.append(None)
            else:
                raise UnsupportedSpeechOption("references", f"reference #{i} has neither codes nor audio")
        if audio_refs:
            return VoiceReference(tuple(texts), tuple(codes), None), audio_refs  # type: ignore[arg-type]
        return VoiceReference.create(texts, codes), []  # type: ignore[arg-type]

    def encode_reference(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """Codes of a reference recording (model thread): resampled to the codec rate and encoded as
        the voice tool does (`VoiceLibrary.add_from_audio`); cached by content (rate and samples)."""
        key = hashlib.sha256(f"{rate}:{audio.dtype}:{audio.shape}".encode() + np.ascontiguousarray(audio).tobytes()).hexdigest()
        with self._cache_lock:
            if key in self._encoded:
                self._encoded.move_to_end(key)
                return self._encoded[key]
        from agent_runtime.tts.s2pro.codec_audio import resample_reference

        samples = np.ascontiguousarray(audio, dtype=np.float32)
        if rate != self.codec.sample_rate:
            samples = resample_reference(samples, rate, self.codec.sample_rate)
        with torch.inference_mode():
            codes = self.codec.encode(torch.from_numpy(np.ascontiguousarray(samples)))[0].cpu().numpy()
        self.references_encoded += 1
        with self._cache_lock:
            self._encoded[key] = codes
            while len(self._encoded) > VOICE_CACHE_SIZE:
                self._encoded.popitem(last=False)
        return codes

    def run_on_model_thread(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the model thread and wait for it (blocking; never from the event loop)."""
        return self.engine.scheduler.submit(fn).result()

    def warmup(self) -> None:
        """Prefill the voice prefix into the prefix cache and speak a few frames end to end."""
        self.run_on_model_thread(lambda: self.engine.prepare_voice(self.voice))
        utt = LocalUtterance(self, max_frames=4)
        try:
            for _ in utt.synthesize("Hello."):
                pass
        finally:
            utt.close()

    def close(self) -> None:
        self.engine.close(wait=True)

    def describe(self) -> dict[str, Any]:
        cfg = self.engine.cfg
        return {
            **super().describe(),
            "device": str(self.engine.device),
            "dtype": str(self.engine.model.dtype).removeprefix("torch."),
            "codebooks": f"{cfg.num_codebooks}x{cfg.codebook_size}",
            "voice": self.voice.voice_id if self.voice is not None else None,
            "first_chunk_frames": self.settings.first_chunk_frames,
            "chunk_frames": self.settings.chunk_frames,
            "batch_decode": f"on, up to {self.engine.scheduler.max_batch}" if self.engine.batch_decode else "off",
            "threads": self.engine.threads,
        }

    def _clip_codes(self, frame: np.ndarray) -> np.ndarray:
        """Codes the codec can decode: a trained model stays within each codebook; random weights
        may not (the Dual-AR's residual vocabulary can exceed the codec's residual codebooks)."""
        if np.any(frame > self._code_max):
            self.clamped_frames += 1
            if self.clamped_frames == 1:
                log.warning("s2pro: generated codes beyond the codec's codebooks were clamped (random weights?)")
            return np.minimum(frame, self._code_max)
        return frame


class LocalUtterance(AsyncUtteranceSynth):
    """One reply on the local backend: one `S2ProStream` and one codec decoder for all segments.

    Counters for tests and tools: `frames_generated` (frames the engine produced),
    `frames_at_cancel` (that count when `cancel()` was called), `segment_frames` (kept frames per
    finished segment) and `segment_samples` (audio samples per finished segment).
    """

    def __init__(
        self,
        backend: LocalBackend,
        max_frames: int | None = None,
        *,
        settings: LocalSettings | None = None,
        voice: VoiceReference | None = None,
        audio_refs: list[tuple[int, np.ndarray, int]] | None = None,
    ) -> None:
        """`settings` / `voice`: this reply's (None: the backend's; `voice` is used only with
        `settings` given); `audio_refs`: the voice's references still to encode, as
        (index in voice.codes, audio, rate), done on the model thread by the first
        segment."""
        self.backend = backend
        self.settings = s = settings or backend.settings
        self.voice = voice if settings is not None else backend.voice
        self._audio_refs = audio_refs or []
        self.decoder = CodecStreamDecoder(backend.codec, s.first_chunk_frames, s.chunk_frames)
        self.stream: S2ProStream | None = None  # opened on the model thread by the first segment
        self.cancelled = threading.Event()
        self.frames_generated = 0
        self.frames_at_cancel: int | None = None
        self.segment_frames: list[int] = []
        self.segment_samples: list[int] = []
        self._max_frames = max_frames
        self._speaker: str | None = None

    # -- AsyncUtteranceSynth -----------------------------------------------------------------------
    async def synthesize_async(self, text: str) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def deliver(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                self.cancel()

        done = False
        _SegmentRun(self, text, deliver).start()
        try:
            while True:
                item = await items.get()
                if item is _END:
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
        finally:
            if not done:  # the consumer left early: stop generating for this reply
                self.cancel()

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        done = False
        _SegmentRun(self, text, items.put).start()
        try:
            while True:
                item = items.get()
                if item is _END:
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
        finally:
            if not done:
                self.cancel()

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.frames_at_cancel = self.frames_generated
            self.cancelled.set()
        if self.stream is not None:
            self.stream.cancel()

    def close(self) -> None:
        self.cancel()
        close_stream = getattr(self.stream, "close", None)  # a pooled engine's stream frees its slot
        if close_stream is not None:
            close_stream()

    # -- model-thread helpers ------------------------------------------------------------------------
    def _segment_text(self, text: str) -> str:
        """Carry the current speaker tag to segments that do not start with one."""
        tags = SPEAKER_TAG.findall(text)
        if tags:
            starts_tagged = SPEAKER_TAG.match(text.lstrip()) is not None
            prefixed = text if starts_tagged or self._speaker is None else self._speaker + text
            self._speaker = tags[-1]
            return prefixed
        return self._speaker + text if self._speaker is not None else text

    def _open_segment(self, text: str) -> Any:
        b = self.backend
        if self.stream is None:
            s = self.settings
            if self._audio_refs:  # references given as audio: encode them here, on the model thread
                assert self.voice is not None
                codes = list(self.voice.codes)
                for index, audio, rate in self._audio_refs:
                    codes[index] = b.encode_reference(audio, rate)
                self.voice = VoiceReference.create(self.voice.texts, codes)
                self._audio_refs = []
            generator = None
            if s.seed is None:
                generator = torch.Generator(device=b.engine.device)
                generator.seed()
            self.stream = b.engine.open_stream(
                self.voice, params=s.params, seed=s.seed, generator=generator, max_context=s.max_context
            )
        cap = self._max_frames if self._max_frames is not None else self.settings.frame_cap(text)
        return self.stream.start_segment(self._segment_text(text), max_frames=cap)

    def _blocks(self, audio: list[np.ndarray]) -> list[np.ndarray]:
        """Codec chunks cut into one block per frame (46 ms at S2-Pro rates)."""
        n = self.backend.codec.frame_length
        return [a[i : i + n] for a in audio for i in range(0, len(a), n)]


class _SegmentRun:
    """One segment as a chain of model-thread jobs: open -> (step -> decode)* -> flush.

    Each job's completion callback (running on the model thread) submits the next job, so the chain
    never waits for the event loop. `deliver` receives audio blocks, then `_END` or an exception.
    """

    def __init__(self, utt: LocalUtterance, text: str, deliver: Callable[[Any], None]) -> None:
        self.utt = utt
        self.text = text
        self.deliver = deliver
        self.sched = utt.backend.engine.scheduler
        self.segment: Any = None
        self.kept = 0
        self.samples = 0
        self.failed = False  # an error was delivered: the chain stops without a flush

    def start(self) -> None:
        if self.utt.cancelled.is_set():
            self.deliver(_END)
            return
        self._chain(self.sched.submit(lambda: self.utt._open_segment(self.text)), self._after_open)

    def _chain(self, fut: Future[Any], then: Callable[[Future[Any]], None]) -> None:
        def callback(f: Future[Any]) -> None:
            try:
                then(f)
            except BaseException as exc:  # a callback must never swallow an error silently
                self._fail(exc)

        fut.add_done_callback(callback)

    def _fail(self, exc: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        if self.segment is not None and self.utt.stream is not None:
            stream, segment = self.utt.stream, self.segment
            self.segment = None
            with contextlib.suppress(RuntimeError):  # the engine is closed
                self.sched.submit(lambda: stream.end_segment(segment))
        self.deliver(exc)

    def _after_open(self, fut: Future[Any]) -> None:
        if fut.cancelled():
            self.deliver(_END)
            return
        exc = fut.exception()
        if exc is not None:
            self.deliver(exc)
            return
        self.segment = fut.result()
        self._next_step()

    def _next_step(self) -> None:
        if self.failed:
            return
        if self.utt.cancelled.is_set():
            self._finish()
            return
        self._chain(self.sched.submit_step(self.segment), self._after_step)

    def _after_step(self, fut: Future[Any]) -> None:
        if self.failed:
            return
        if fut.cancelled():
            self._finish()
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(exc)
            return
        frame = fut.result()
        if frame is None:
            self._finish()
            return
        self.utt.frames_generated += 1
        if self.utt.cancelled.is_set():
            self._finish()
            return
        self.kept += 1
        codes = self.utt.backend._clip_codes(frame)
        self._chain(self.sched.submit_codec(self.utt.decoder, codes[:, None]), self._after_decode)
        self._next_step()

    def _after_decode(self, fut: Future[Any]) -> None:
        """Model thread: the codec chunks the frame completed (batched with other streams' on the
        pooled engine) go out, unless the reply was cancelled meanwhile."""
        if fut.cancelled() or self.failed:
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(exc)
            return
        if self.utt.cancelled.is_set():
            return
        for block in self.utt._blocks(fut.result()):
            self.samples += len(block)
            self.deliver(block)

    def _finish(self) -> None:
        if self.failed:
            return

        def flush() -> None:
            utt = self.utt
            if utt.stream is not None and self.segment is not None:
                utt.stream.end_segment(self.segment)
            if not utt.cancelled.is_set() and not self.failed:
                for block in utt._blocks(utt.decoder.flush()):
                    self.samples += len(block)
                    self.deliver(block)
                utt.segment_frames.append(self.kept)
                utt.segment_samples.append(self.samples)
            self.deliver(_END)

        fut = self.sched.submit(flush)
        self._chain(fut, lambda f: None if f.exception() is None else self.deliver(f.exception()))


def load_voice(name: str | None, library: str | Path | None) -> VoiceReference | None:
    """The voice reference for library voice `name` (None: no reference, the model's own voice)."""
    if name is None:
        return None
    from agent_runtime.tts.s2pro.voices import VoiceError, VoiceLibrary

    try:
        voice = VoiceLibrary(library).get(name)
    except VoiceError as exc:
        raise ConfigError(f"s2pro: {exc}") from None
    return VoiceReference.create(voice.text, voice.codes, voice_id=voice.name)
