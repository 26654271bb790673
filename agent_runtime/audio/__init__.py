"""Audio frames, resampling and WAV I/O."""

from agent_runtime.audio.frame import AudioFrame, float_to_pcm16, pcm16_to_float, split_frames
from agent_runtime.audio.resample import FrameRebuffer, StreamResampler, resample
from agent_runtime.audio.wav import read_audio, write_wav

__all__ = [
    "AudioFrame",
    "FrameRebuffer",
    "StreamResampler",
    "float_to_pcm16",
    "pcm16_to_float",
    "read_audio",
    "resample",
    "split_frames",
    "write_wav",
]
