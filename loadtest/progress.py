"""A progress bar on stderr while a run goes: tqdm when installed, else a plain one-line bar."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(fraction, message)`; `close()` at the end. Silent when `enabled` is False."""

    def __init__(self, label: str, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._bar = None
        self._last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=1000, desc=label, file=self.stream, leave=True,
                                 bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {elapsed}<{remaining} {postfix}")
            except ImportError:
                self._bar = None

    def update(self, fraction: float, message: str = "") -> None:
        if not self.enabled:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        if self._bar is not None:
            self._bar.n = int(fraction * 1000)
            self._bar.set_postfix_str(message, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last < 0.5 and fraction < 1.0:
            return
        self._last = now
        filled = int(fraction * 30)
        self.stream.write(f"\r{self.label}: {fraction:4.0%} |{'#' * filled}{'.' * (30 - filled)}| {message[:60]:<60}")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write("\n")
            self.stream.flush()
