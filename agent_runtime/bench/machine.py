"""The one-line description of the machine a benchmark ran on (printed and written with its figures)."""

from __future__ import annotations

import os
import platform
import sys


def machine_description() -> str:
    """CPU model, cores, Python and OS; the GPU's name too when this process already uses torch with
    CUDA (torch is never imported here, so a CPU-only bench stays light)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()} (torch {torch.__version__})"
    return text
