"""Voice library: named zero-shot cloning references (codec codes + transcript + metadata).

Layout, one directory per voice under the library root::

    <root>/<name>/codes.npy   int64 (num_codebooks, frames), the codec encoding of the reference audio
    <root>/<name>/text.txt    what is said in the reference (UTF-8)
    <root>/<name>/meta.json   format, codec, durations, source file, checks, creation time

The root is `--library DIR`, else `$AGENT_RUNTIME_VOICES`, else `~/.local/share/agent-runtime/voices`.
Names are safe identifiers (letters, digits, `_`, `-`; no dots or slashes), so a name can never
point outside the library. Reference audio is checked before encoding (`check_reference_audio`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent_runtime.errors import AgentRuntimeError, AudioFormatError

VOICES_ENV = "AGENT_RUNTIME_VOICES"
VOICE_FORMAT = "agent-runtime/s2pro-voice"
VOICE_FORMAT_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

MIN_SECONDS = 3.0
MAX_SECONDS = 30.0
SILENCE_PEAK = 1e-3  # peak below -60 dBFS: silence
QUIET_RMS_DB = -45.0  # overall level below this: warn
CLIP_REFUSE_FRACTION = 0.01  # >= 1 % of samples at full scale: refuse (unless forced)
ACTIVE_WINDOW_S = 0.02


class VoiceError(AgentRuntimeError):
    """A voice name, library entry or reference is unusable."""


def default_library_dir() -> Path:
    env = os.environ.get(VOICES_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "agent-runtime" / "voices"


def check_name(name: str) -> str:
    """Return `name` if it is a safe voice identifier, else raise VoiceError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise VoiceError(
            f"invalid voice name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Voice:
    """A stored voice; `codes` (num_codebooks, frames) and `text` form the cloning reference."""

    name: str
    text: str
    codes: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def frames(self) -> int:
        return int(self.codes.shape[1])

    @property
    def duration_s(self) -> float:
        return float(self.meta.get("duration_s", 0.0))


@dataclass(frozen=True)
class AudioReport:
    """Result of `check_reference_audio`: measured values and warnings (errors raise)."""

    duration_s: float
    peak: float
    rms_db: float
    active_s: float
    clipped_fraction: float
    warnings: tuple[str, ...]


def check_reference_audio(
    samples: np.ndarray,
    sample_rate: int,
    *,
    clipped_fraction: float | None = None,
    peak: float | None = None,
    source: str = "reference audio",
    allow_clipping: bool = False,
) -> AudioReport:
    """Validate a cloning reference; raise AudioFormatError when unusable, return warnings otherwise.

    Refused: shorter than 3 s, silent (peak < -60 dBFS), >= 1 % of samples clipped (unless
    `allow_clipping`). Warned: longer than 30 s (only the start matters to the model, and the prompt
    grows), quiet, less than 3 s of sound, some clipping.
    """
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    duration = len(x) / float(sample_rate)
    if duration < MIN_SECONDS:
        raise AudioFormatError(f"{source}: {duration:.2f} s is too short for a voice reference (need >= {MIN_SECONDS:g} s)")
    pk = float(np.abs(x).max()) if peak is None else float(peak)
    if pk < SILENCE_PEAK:
        raise AudioFormatError(f"{source}: the audio is silent (peak {_db(pk):.0f} dBFS)")
    clip = float((np.abs(x) >= 0.999).mean()) if clipped_fraction is None else float(clipped_fraction)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    rms_db = _db(rms)
    win = max(1, int(ACTIVE_WINDOW_S * sample_rate))
    n_win = len(x) // win
    frames_rms = np.sqrt(np.mean(np.square(x[: n_win * win].reshape(n_win, win), dtype=np.float64), axis=1))
    loudest = float(frames_rms.max()) if n_win else rms
    active_s = float((frames_rms > max(10 ** (-50 / 20), loudest * 10 ** (-35 / 20))).sum() * win / sample_rate)
    warnings: list[str] = []
    if clip >= CLIP_REFUSE_FRACTION and not allow_clipping:
        raise AudioFormatError(
            f"{source}: {100 * clip:.1f} % of the samples are clipped (full scale); record it again at a lower "
            "level, or pass --force to use it anyway"
        )
    if clip > 0.0005:
        warnings.append(f"{100 * clip:.2f} % of the samples are clipped; the cloned voice may sound distorted")
    if duration > MAX_SECONDS:
        warnings.append(f"{duration:.1f} s is long for a reference (> {MAX_SECONDS:g} s): prompts get longer and slower")
    if rms_db < QUIET_RMS_DB:
        warnings.append(f"the audio is quiet (RMS {rms_db:.0f} dBFS)")
    if active_s < MIN_SECONDS:
        warnings.append(f"only about {active_s:.1f} s of the audio contains sound")
    return AudioReport(duration, pk, rms_db, active_s, clip, tuple(warnings))


def _db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-10))


class VoiceLibrary:
    """A directory of voices. All methods validate names; nothing is written outside `root`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_library_dir()

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def __contains__(self, name: str) -> bool:
        return NAME_RE.fullmatch(name or "") is not None and (self._dir(name) / "meta.json").is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)
                      and (p / "meta.json").is_file())

    def __iter__(self) -> Iterator[Voice]:
        for name in self.names():
            try:
                yield self.get(name)
            except VoiceError:
                continue

    def get(self, name: str) -> Voice:
        """Load voice `name`; VoiceError if it does not exist or is damaged."""
        d = self._dir(name)
        if not (d / "meta.json").is_file():
            raise VoiceError(f"no voice named {name!r} in {self.root}")
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            text = (d / "text.txt").read_text(encoding="utf-8").removesuffix("\n")
            codes = np.load(d / "codes.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise VoiceError(f"voice {name!r} in {self.root} is damaged ({exc})") from None
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise VoiceError(f"voice {name!r}: codes.npy must be an integer matrix, got {codes.dtype} {codes.shape}")
        return Voice(name, text, codes.astype(np.int64), meta, d)

    def add(self, name: str, codes: np.ndarray, text: str, meta: dict[str, Any] | None = None,
            replace: bool = False) -> Voice:
        """Store a voice atomically (written to a temporary directory, then renamed)."""
        d = self._dir(name)
        text = text.strip()
        if not text:
            raise VoiceError("the reference transcript (--text) is empty")
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] == 0 or not np.issubdtype(codes.dtype, np.integer):
            raise VoiceError(f"codes must be a non-empty integer matrix (num_codebooks, frames), got {codes.shape}")
        if d.exists() and not replace:
            raise VoiceError(f"a voice named {name!r} already exists in {self.root} (use --replace)")
        full_meta = {
            "format": VOICE_FORMAT,
            "format_version": VOICE_FORMAT_VERSION,
            "name": name,
            "num_codebooks": int(codes.shape[0]),
            "frames": int(codes.shape[1]),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(meta or {}),
        }
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        except OSError as exc:
            raise VoiceError(f"cannot write to the voice library {self.root} ({exc})") from None
        try:
            np.save(tmp / "codes.npy", codes.astype(np.int64))
            (tmp / "text.txt").write_text(text + "\n", encoding="utf-8")
            (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            if d.exists():
                old = d.with_name(f".old-{name}-{os.getpid()}")
                d.rename(old)
                tmp.rename(d)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(d)
        except OSError as exc:
            raise VoiceError(f"cannot store voice {name!r} in {self.root} ({exc})") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.get(name)

    def remove(self, name: str) -> None:
        d = self._dir(name)
        if not d.is_dir():
            raise VoiceError(f"no voice named {name!r} in {self.root}")
        try:
            shutil.rmtree(d)
        except OSError as exc:
            raise VoiceError(f"cannot remove voice {name!r} from {self.root} ({exc})") from None

    def add_from_audio(
        self,
        name: str,
        audio_path: str | Path,
        text: str,
        codec: Any,
        *,
        replace: bool = False,
        force: bool = False,
        codec_info: dict[str, Any] | None = None,
    ) -> tuple[Voice, AudioReport]:
        """Read, check and encode `audio_path` with `codec` (an S2ProCodec), then store it as `name`."""
        import torch

        from agent_runtime.tts.s2pro.codec_audio import read_audio

        check_name(name)
        if not text.strip():
            raise VoiceError("the reference transcript (--text) is empty")
        if name in self and not replace:
            raise VoiceError(f"a voice named {name!r} already exists in {self.root} (use --replace)")
        audio = read_audio(audio_path, codec.sample_rate)
        report = check_reference_audio(
            audio.samples, audio.sample_rate, clipped_fraction=audio.source_clipped_fraction,
            peak=audio.source_peak, source=str(audio_path), allow_clipping=force,
        )
        codes = codec.encode(torch.from_numpy(audio.samples))[0].cpu().numpy()
        meta = {
            "duration_s": round(report.duration_s, 3),
            "sample_rate": int(codec.sample_rate),
            "frame_length": int(codec.frame_length),
            "source": {"file": Path(audio_path).name, "sample_rate": audio.source_rate,
                       "channels": audio.source_channels},
            "checks": {"peak": round(report.peak, 4), "rms_db": round(report.rms_db, 1),
                       "active_s": round(report.active_s, 2), "clipped_fraction": report.clipped_fraction,
                       "warnings": list(report.warnings)},
            "codec": codec_info or {},
        }
        return self.add(name, codes, text, meta, replace=replace), report
