"""What the caller experienced, from the arrival times and loudness of the agent's audio frames.

- voice-to-voice at the client: the caller's last audible sound leaving (`Utterance.speech_end`: the
  last 10 ms block above -45 dBFS in the audio it sent) -> the first audible agent frame that arrives
  after it (an agent burst already playing when the caller stopped is skipped: that is the old reply).
  The server's own figure (its VAD's end of speech -> its first audio frame sent) is in the report
  next to it (`server_voice_to_voice_ms`).
- barge-in stop: onset of speech spoken over the agent -> the last audible agent frame before a silence
  of `measure.stop_quiet_ms` (+ one frame). Only counted when the agent was audible as the caller began.
- gaps (underruns): silences longer than `measure.underrun_min_ms` inside a reply (onset to its last
  audible frame before the caller's next utterance); underrun rate = gap time / reply time.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import Any

from loadtest.scenario import Measure
from loadtest.script import CallRecord


@dataclass
class Bursts:
    """Agent audio as runs of audible frames separated by more than `gap_s` of silence."""

    starts: list[float]
    ends: list[float]  # arrival of each run's last audible frame

    @classmethod
    def of(cls, times: list[float], gap_s: float) -> Bursts:
        starts: list[float] = []
        ends: list[float] = []
        for t in times:
            if ends and t - ends[-1] <= gap_s:
                ends[-1] = t
            else:
                starts.append(t)
                ends.append(t)
        return cls(starts, ends)


def analyze_call(rec: CallRecord, m: Measure, run_t0: float) -> list[dict[str, Any]]:
    """One sample per caller utterance that expected a reply."""
    leg = rec.leg
    if leg is None or not rec.utterances:
        return []
    frame_s = leg.frame_s
    audible = [t for t, p in zip(leg.arrivals, leg.peaks, strict=True) if p > m.audible_peak]
    onsets = Bursts.of(audible, m.stop_quiet_ms / 1000)
    call_end = rec.hang_up_step or rec.ended or (audible[-1] if audible else 0.0)
    utts = rec.utterances
    out = []
    for i, u in enumerate(utts):
        if not u.expects_reply:
            continue
        window_end = utts[i + 1].start if i + 1 < len(utts) else call_end
        sample: dict[str, Any] = {
            "caller": rec.caller, "call": rec.number, "transport": rec.transport, "step": u.step,
            "t": round(u.end - run_t0, 3), "speech_ms": round((u.end - u.start) * 1000, 1),
            "voice_to_voice_ms": None, "reply_ms": None, "gaps": 0, "gap_ms": 0.0,
            "barge_in": u.barge_in, "barge_in_ms": None, "server_interrupt": None,
        }
        # onset: first run that starts after the end of speech (and before the next utterance)
        spoken_end = u.end if u.speech_end is None else u.speech_end
        k = bisect.bisect_left(onsets.starts, spoken_end)
        if k < len(onsets.starts) and onsets.starts[k] < window_end:
            onset = onsets.starts[k]
            sample["voice_to_voice_ms"] = round((onset - spoken_end) * 1000, 1)
            lo = bisect.bisect_left(audible, onset)
            hi = bisect.bisect_left(audible, window_end)
            reply = audible[lo:hi]
            sample["reply_ms"] = round((reply[-1] - onset + frame_s) * 1000, 1)
            gaps = [b - a - frame_s for a, b in itertools.pairwise(reply) if b - a > m.underrun_min_ms / 1000]
            sample["gaps"] = len(gaps)
            sample["gap_ms"] = round(sum(gaps) * 1000, 1)
        if u.barge_in:
            _barge(sample, u.start, audible, m, frame_s, leg.interrupt_signals)
        out.append(sample)
    return out


def _barge(
    sample: dict[str, Any], start: float, audible: list[float], m: Measure, frame_s: float, signals: list[float]
) -> None:
    """Barge-in stop latency for speech that began at `start` over the agent."""
    quiet = m.stop_quiet_ms / 1000
    i = bisect.bisect_left(audible, start - quiet)
    if i >= len(audible) or audible[i] > start + frame_s * 2:
        sample["barge_in"] = False  # the agent was not talking any more: nothing to interrupt
        sample["barge_in_note"] = "agent already silent"
        return
    while i + 1 < len(audible) and audible[i + 1] - audible[i] <= quiet:
        i += 1
    sample["barge_in_ms"] = round(max(0.0, audible[i] + frame_s - start) * 1000, 1)
    sample["server_interrupt"] = any(s >= start for s in signals)


def call_summary(rec: CallRecord, run_t0: float) -> dict[str, Any]:
    """The call itself, without per-frame data."""
    return {
        "caller": rec.caller, "call": rec.number, "transport": rec.transport, "status": rec.status,
        "error": rec.error, "t_start": round(rec.started - run_t0, 3),
        "connect_ms": None if rec.connected is None else round((rec.connected - rec.started) * 1000, 1),
        "duration_s": None if rec.ended is None else round(rec.ended - rec.started, 3),
        "utterances": len(rec.utterances), "scripted_hang_up": rec.hang_up_step is not None,
    }
