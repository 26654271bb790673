"""`agent-runtime s2pro encode | decode | bench-codec`: the S2-Pro codec on the command line.

Heavy imports (torch) happen inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_runtime.errors import AudioFormatError, ConfigError

log = logging.getLogger(__name__)

_CODEC_HELP = "codec checkpoint (codec.pth of fishaudio/s2-pro, or a compatible state dict)"
_CONFIG_HELP = (
    "codec architecture JSON (schema agent-runtime/s2pro-codec-config); default: the S2-Pro codec"
)
_DTYPE_HELP = "compute dtype: fp32 (default, reference-exact) or bf16 (weights and activations in bfloat16)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `encode`, `decode` and `bench-codec` to the `agent-runtime s2pro` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter

    enc = sub.add_parser(
        "encode",
        help="audio file -> codec codes (.npy int64, num_codebooks x frames)",
        description=(
            "Encode a WAV (any rate, mono or stereo: channels are averaged, the signal resampled to the\n"
            "codec rate) into codes: int64 array (num_codebooks, ceil(samples / frame_length)).\n\n"
            "example:\n  agent-runtime s2pro encode --codec codec.pth --audio ref.wav --out ref_codes.npy"
        ),
        formatter_class=fmt,
    )
    _common(enc)
    enc.add_argument("--audio", required=True, metavar="IN.wav", help="input audio file")
    enc.add_argument("--out", required=True, metavar="CODES.npy", help="output codes (.npy)")
    enc.add_argument("--resampler", choices=("reference", "soxr"), default="reference",
                     help="for files not at the codec rate: the reference's windowed-sinc (default) or soxr")
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser(
        "decode",
        help="codec codes (.npy) -> audio (.npy float32 samples or .wav)",
        description=(
            "Decode codes (num_codebooks, frames) into audio: frames * frame_length float32 samples at\n"
            "the codec rate, written as a 1-D .npy or a WAV (32-bit float; --pcm16 for 16-bit PCM).\n"
            "With --stream the frames go through the streaming decoder chunk by chunk and the output is\n"
            "the concatenation of the chunks (equal to a full decode within ~1e-6).\n\n"
            "example:\n  agent-runtime s2pro decode --codec codec.pth --codes codes.npy --out out.wav \\\n"
            "      --stream --first-chunk-frames 1 --chunk-frames 4"
        ),
        formatter_class=fmt,
    )
    _common(dec)
    dec.add_argument("--codes", required=True, metavar="CODES.npy", help="codes, integer array (num_codebooks, frames)")
    dec.add_argument("--out", required=True, metavar="OUT.npy|OUT.wav", help="output samples (.npy) or audio (.wav)")
    dec.add_argument("--stream", action="store_true", help="decode chunk by chunk with the streaming decoder")
    dec.add_argument("--first-chunk-frames", type=int, default=1, metavar="N",
                     help="with --stream: frames in the first chunk (default 1 = 46 ms)")
    dec.add_argument("--chunk-frames", type=int, default=4, metavar="M",
                     help="with --stream: frames in each later chunk (default 4)")
    dec.add_argument("--pcm16", action="store_true", help="write a 16-bit PCM WAV instead of 32-bit float")
    dec.set_defaults(func=cmd_decode)

    bench = sub.add_parser(
        "bench-codec",
        help="benchmark the streaming codec decoder (full S2-Pro shapes, random weights)",
        description=(
            "Decode cost on the full S2-Pro codec shapes with random weights: one chunk of 1/2/4 frames\n"
            "with the streaming decoder; streaming --seconds of audio chunk by chunk against re-decoding\n"
            "the whole prefix for every chunk (sglang-omni's method) in the same run, as a ratio; peak memory.\n\n"
            "example:\n  OMP_NUM_THREADS=2 agent-runtime s2pro bench-codec --seconds 30"
        ),
        formatter_class=fmt,
    )
    bench.add_argument("--seconds", type=float, default=30.0, help="audio length of the streaming comparison (default 30)")
    bench.add_argument("--chunk-frames", type=int, default=25,
                       help="frames per chunk after the first in the comparison (default 25 = 1.16 s)")
    bench.add_argument("--first-chunk-frames", type=int, default=1, help="frames in the first chunk (default 1)")
    bench.add_argument("--sizes", default="1,2,4", help="chunk sizes (frames) timed in part 1 (default 1,2,4)")
    bench.add_argument("--repeats", type=int, default=5, help="timed repeats per chunk size (median; default 5)")
    bench.add_argument("--prefix-points", type=int, default=2,
                       help="prefix re-decodes actually timed (evenly spaced over the first half of the chunks); "
                       "the others follow the fitted linear cost (default 2)")
    bench.add_argument("--prefix-all", action="store_true", help="time every prefix re-decode (slow: quadratic)")
    bench.add_argument("--skip-prefix", action="store_true", help="skip the re-decode-the-prefix baseline")
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] when a GPU is available")
    bench.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="compute dtype (default fp32)")
    bench.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    bench.add_argument("--codec-config", metavar="CFG.json", help="other codec shapes (default: the full S2-Pro codec)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.set_defaults(func=cmd_bench)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec", required=True, metavar="CODEC.pth", help=_CODEC_HELP)
    p.add_argument("--codec-config", metavar="CFG.json", help=_CONFIG_HELP)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help=_DTYPE_HELP)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] when a GPU is available")


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"--device {device}: use cpu or cuda[:N]")


def _load(args: argparse.Namespace) -> Any:
    from agent_runtime.tts.s2pro.codec_loader import load_codec

    _check_device(args.device)
    return load_codec(args.codec, args.codec_config, dtype=args.dtype, device=args.device)


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from agent_runtime.tts.s2pro.codec_audio import read_audio

    out = Path(args.out)
    if out.suffix.lower() != ".npy":
        raise ConfigError(f"--out {out}: codes are written as .npy")
    codec = _load(args)
    audio = read_audio(args.audio, codec.sample_rate, resampler=args.resampler)
    codes = codec.encode(torch.from_numpy(audio.samples))[0].cpu().numpy().astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, codes)
    log.info("%s: %.2f s -> codes %s -> %s", args.audio, audio.duration, codes.shape, out)
    return 0


def load_codes(path: str | Path, num_codebooks: int, codebook_sizes: Sequence[int] | None = None) -> Any:
    """Read an integer code matrix (num_codebooks, frames) from .npy, with clear errors.

    With `codebook_sizes` (one per row), every code must lie in [0, size) of its row."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise AudioFormatError(f"{p}: no such codes file")
    try:
        codes = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise AudioFormatError(f"{p}: not a readable .npy array ({exc})") from None
    if not isinstance(codes, np.ndarray):  # an .npz archive
        codes.close()
        raise AudioFormatError(f"{p}: not a .npy array (an .npz archive?): save the codes with numpy.save")
    if codes.ndim == 3 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 2 or codes.shape[0] != num_codebooks or codes.shape[1] == 0:
        raise AudioFormatError(f"{p}: expected codes of shape ({num_codebooks}, frames>0), got {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise AudioFormatError(f"{p}: codes must be integers, got {codes.dtype}")
    if codes.min() < 0:
        raise AudioFormatError(f"{p}: codes must be non-negative")
    for row, size in enumerate(codebook_sizes or ()):
        hi = codes[row].max()
        if hi >= size:  # compared before the cast: a huge uint64 must not wrap to a negative int64
            raise AudioFormatError(
                f"{p}: codes must lie in [0, {size}), got [{codes[row].min()}, {hi}] (codebook {row})"
            )
    return codes.astype(np.int64)


def codec_codebook_sizes(codec: Any) -> list[int]:
    """The number of codes of each of the codec's codebooks (semantic first, then residual)."""
    q = codec.config.quantizer
    return [q.semantic_codebook_size] * q.n_semantic_codebooks + [q.residual_codebook_size] * q.n_residual_codebooks


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from agent_runtime.tts.s2pro.codec_audio import write_audio
    from agent_runtime.tts.s2pro.streaming import stream_decode

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".wav"):
        raise ConfigError(f"--out {out}: use a .npy or .wav file name")
    if args.stream and (args.first_chunk_frames < 1 or args.chunk_frames < 1):
        raise ConfigError("--first-chunk-frames and --chunk-frames must be >= 1")
    codec = _load(args)
    codes = load_codes(args.codes, codec.num_codebooks, codec_codebook_sizes(codec))
    if args.stream:
        chunks = stream_decode(codec, codes, args.first_chunk_frames, args.chunk_frames)
        audio = np.concatenate(chunks)
        log.info("decoded %d frames in %d chunks", codes.shape[1], len(chunks))
    else:
        audio = codec.decode(torch.from_numpy(codes))[0, 0].cpu().numpy()
    write_audio(out, audio.astype(np.float32), codec.sample_rate, pcm16=args.pcm16)
    log.info("%s: %d samples (%.2f s) -> %s", args.codes, audio.size, audio.size / codec.sample_rate, out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from agent_runtime.tts.s2pro.codec_bench import BenchOptions, run_bench

    _check_device(args.device)
    try:
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--sizes {args.sizes!r}: comma-separated integers expected") from None
    if not sizes or min(sizes) < 1 or args.chunk_frames < 1 or args.first_chunk_frames < 1 or args.seconds <= 0:
        raise ConfigError("chunk sizes and --seconds must be positive")
    if args.prefix_points < 2:
        raise ConfigError("--prefix-points must be >= 2")
    opts = BenchOptions(
        seconds=args.seconds, chunk_frames=args.chunk_frames, first_chunk_frames=args.first_chunk_frames,
        sizes=sizes, repeats=max(1, args.repeats), device=args.device, dtype=args.dtype,
        threads=args.threads, skip_prefix=args.skip_prefix, prefix_all=args.prefix_all,
        prefix_points=args.prefix_points, config_path=args.codec_config,
    )
    import torch

    torch.set_flush_denormal(True)  # random weights: keep denormals from distorting the timings
    res = run_bench(opts, log=lambda line: print(line, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


