"""One simulated call: connect, play the scenario's steps in real time, hang up.

Every wait is bounded (reply waits by `caller.max_reply_wait_s`, the whole call by the runner's
`limits.call_timeout_s`). What happened is kept in a `CallRecord` for `analysis`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from loadtest.callers import CallFailed, Leg
from loadtest.scenario import Scenario, Step


@dataclass
class Utterance:
    """One thing the caller played."""

    step: int
    start: float
    end: float
    expects_reply: bool  # speech (not noise)
    barge_in: bool = False  # spoken over the agent's reply
    speech_end: float | None = None
    """When the caller's last audible sound left (`Leg.speech_end`); voice to voice counts from it."""


@dataclass
class CallRecord:
    """One call as the caller saw it (times are time.monotonic())."""

    caller: int
    number: int
    transport: str
    started: float
    status: str = "running"  # ok | failed | dropped | timeout
    error: str = ""
    connected: float | None = None
    ended: float | None = None
    hang_up_step: float | None = None  # a scripted hang-up mid-reply
    utterances: list[Utterance] = field(default_factory=list)
    leg: Leg | None = None


async def _wait_onset(leg: Leg, after: float, threshold: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while leg.alive and time.monotonic() < deadline:
        onset = leg.first_audible_after(after, threshold)
        if onset is not None:
            return onset
        await asyncio.sleep(0.01)
    return None


async def _wait_reply(leg: Leg, after: float, threshold: int, quiet_s: float, timeout: float) -> None:
    """Until the reply to speech that ended at `after` has come and gone quiet for `quiet_s`."""
    deadline = time.monotonic() + timeout
    onset = await _wait_onset(leg, after, threshold, timeout)
    if onset is None:
        return
    while leg.alive and time.monotonic() < deadline:
        last = leg.last_audible(threshold) or onset
        if time.monotonic() - last >= quiet_s:
            return
        await asyncio.sleep(0.02)


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def run_script(
    leg: Leg, record: CallRecord, base_url: str, scenario: Scenario, audio: list[np.ndarray | None]
) -> None:
    """Play one call into `leg`, filling `record`; the caller always hangs up at the end."""
    c = scenario.caller
    thr = scenario.measure.audible_peak
    quiet = c.wait_after_reply_ms / 1000
    plan: list[tuple[int, Step]] = [(i, s) for _ in range(c.repeat) for i, s in enumerate(c.steps)]
    record.leg = leg
    try:
        try:
            await leg.connect(base_url, scenario.limits.connect_timeout_s)
        except CallFailed as exc:
            record.status, record.error = "failed", str(exc)
            return
        record.connected = time.monotonic()
        await asyncio.sleep(c.start_silence_ms / 1000)
        last_speech_end: float | None = None
        for k, (idx, step) in enumerate(plan):
            if not leg.alive:
                break
            if step.pause_before_ms:
                await asyncio.sleep(step.pause_before_ms / 1000)
            if step.silence_ms is not None:
                await asyncio.sleep(step.silence_ms / 1000)
                continue
            if step.hang_up_after_ms is not None:
                if last_speech_end is not None:
                    onset = await _wait_onset(leg, last_speech_end, thr, c.max_reply_wait_s)
                    if onset is not None:
                        await _sleep_until(onset + step.hang_up_after_ms / 1000)
                record.hang_up_step = time.monotonic()
                break
            pcm = audio[idx]
            assert pcm is not None
            over = False
            if step.barge_in_after_ms is not None and last_speech_end is not None:
                onset = await _wait_onset(leg, last_speech_end, thr, c.max_reply_wait_s)
                if onset is not None:
                    await _sleep_until(onset + step.barge_in_after_ms / 1000)
                    over = True
            start, end = await leg.say(pcm)
            spoken_end = leg.speech_end(pcm, start, end) if step.speaks else None
            record.utterances.append(Utterance(idx, start, end, step.speaks, over, spoken_end))
            if not step.speaks:
                continue
            last_speech_end = end
            nxt = plan[k + 1][1] if k + 1 < len(plan) else None
            if nxt is None or (nxt.barge_in_after_ms is None and nxt.hang_up_after_ms is None):
                await _wait_reply(leg, end, thr, quiet, c.max_reply_wait_s)
        record.status = "ok"
        if leg.peer_ended_at is not None:
            record.status, record.error = "dropped", "the server ended the call before the caller hung up"
    except asyncio.CancelledError:
        record.status, record.error = "timeout", "call exceeded limits.call_timeout_s or the run ended"
        raise
    finally:
        record.ended = time.monotonic()
        await leg.hang_up()
