"""Parity of the Dual-AR re-implementation with the reference fixture (tiny checkpoint, fp32, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.tts.s2pro.engine import S2ProEngine, naive_generate
from agent_runtime.tts.s2pro.model import LayerKV
from agent_runtime.tts.s2pro.prompt import VoiceReference, one_batch_text
from agent_runtime.tts.s2pro.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(s2pro_fixtures: Path) -> dict:
    meta = json.loads((s2pro_fixtures / "tiny_expected_fp32.json").read_text())
    expected = dict(np.load(s2pro_fixtures / "tiny_expected_fp32.npz"))
    codes = np.load(s2pro_fixtures / meta["reference_codes"])
    return {"meta": meta, "expected": expected, "ref_codes": codes, "dir": s2pro_fixtures}


@pytest.fixture(scope="module")
def engine_fp32(case: dict) -> S2ProEngine:
    return S2ProEngine.load(case["dir"] / "tiny", dtype=torch.float32)


def _voice(case: dict) -> VoiceReference:
    return VoiceReference.create(case["meta"]["reference_text"], case["ref_codes"])


def _params(case: dict) -> SamplingParams:
    m = case["meta"]
    return SamplingParams(m["temperature"], m["top_p"], m["top_k"])


def test_prompt_values_exact(case: dict, engine_fp32: S2ProEngine) -> None:
    prompt = engine_fp32.builder.build(one_batch_text(case["meta"]["text"]), _voice(case))
    np.testing.assert_array_equal(prompt.numpy(), case["expected"]["prompt_values"])
    assert prompt.dtype == torch.int64


def test_semantic_ids_from_tokenizer(case: dict, engine_fp32: S2ProEngine) -> None:
    m = case["meta"]
    assert engine_fp32.cfg.semantic_begin_id == m["semantic_begin_id"]
    assert engine_fp32.cfg.semantic_end_id == m["semantic_end_id"]
    assert engine_fp32.im_end_id == m["im_end_id"]


def test_prefill_logits_and_hidden(case: dict, engine_fp32: S2ProEngine) -> None:
    exp = case["expected"]
    model = engine_fp32.model
    prompt = torch.from_numpy(exp["prompt_values"])[None]
    with torch.inference_mode():
        normed, _ = model.forward_slow(prompt, None, 0, 0, return_all=True)
        logits_all = model.slow_logits(normed)[0]
        caches = [LayerKV.zeros(model.cfg.slow, model.cfg.cache_len, model.dtype, model.device) for _ in model.layers]
        last, fast_in = model.forward_slow(prompt, caches, 0, model.cfg.cache_len)
        logits_last = model.slow_logits(last)[0, -1]
    assert (logits_all - torch.from_numpy(exp["prefill_logits_all"])).abs().max() <= 1e-4
    assert (normed[0] - torch.from_numpy(exp["prefill_hidden_all"])).abs().max() <= 1e-5
    assert (logits_last - torch.from_numpy(exp["prefill_logits_last"])).abs().max() <= 1e-4
    assert (fast_in.view(-1) - torch.from_numpy(exp["prefill_hidden_last"])).abs().max() <= 1e-5


def test_fast_logits_teacher(case: dict, engine_fp32: S2ProEngine) -> None:
    exp = case["expected"]
    with torch.inference_mode():
        logits = engine_fp32.model.fast_logits_teacher(
            torch.from_numpy(exp["prefill_hidden_last"]), torch.from_numpy(exp["fast_teacher_codes"])
        )
    assert (logits - torch.from_numpy(exp["fast_logits_teacher"])).abs().max() <= 1e-4


def test_naive_generate_matches_reference_sequence(case: dict, engine_fp32: S2ProEngine) -> None:
    exp, m = case["expected"], case["meta"]
    torch.manual_seed(m["seed"])
    full = naive_generate(
        engine_fp32.model, torch.from_numpy(exp["prompt_values"]), engine_fp32.im_end_id, _params(case), m["max_frames"]
    )
    np.testing.assert_array_equal(full.numpy(), exp["gen_full"])


def test_engine_gen_codes_exact(case: dict, engine_fp32: S2ProEngine) -> None:
    m = case["meta"]
    stream = engine_fp32.open_stream(voice=_voice(case), params=_params(case), max_frames=m["max_frames"])
    torch.manual_seed(m["seed"])
    codes = stream.generate(one_batch_text(m["text"]))
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, case["expected"]["gen_codes"])
    # the same again from the prefix cache, with a private generator seeded the same way
    again = engine_fp32.open_stream(voice=_voice(case), params=_params(case), seed=m["seed"], max_frames=m["max_frames"])
    np.testing.assert_array_equal(again.generate(one_batch_text(m["text"])), case["expected"]["gen_codes"])
    assert engine_fp32.prefix_hits >= 1


def test_bf16_engine_equals_naive(case: dict) -> None:
    engine = S2ProEngine.load(case["dir"] / "tiny", dtype=torch.bfloat16)
    m = case["meta"]
    prompt = engine.builder.build(one_batch_text(m["text"]), _voice(case))
    for seed in (0, 42):
        torch.manual_seed(seed)
        full = naive_generate(engine.model, prompt, engine.im_end_id, _params(case), 30)
        stream = engine.open_stream(voice=_voice(case), params=_params(case), max_frames=30)
        torch.manual_seed(seed)
        codes = stream.generate(one_batch_text(m["text"]))
        np.testing.assert_array_equal(codes, full[1:, prompt.shape[1] : -1].numpy())


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = REPO / ".venv" / "bin" / "agent-runtime"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent_runtime.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd + args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.slow
def test_cli_generate_reproduces_gen_codes(case: dict, tmp_path: Path) -> None:
    m, fx = case["meta"], case["dir"]
    out = tmp_path / "codes.npy"
    res = _cli(
        [
            "s2pro", "generate", "--checkpoint", str(fx / "tiny"), "--text", m["text"],
            "--reference-text", m["reference_text"], "--reference-codes", str(fx / "reference_codes.npy"),
            "--dtype", "fp32", "--seed", str(m["seed"]), "--temperature", str(m["temperature"]),
            "--top-p", str(m["top_p"]), "--top-k", str(m["top_k"]), "--max-frames", str(m["max_frames"]),
            "--out", str(out),
        ],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    codes = np.load(out)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, case["expected"]["gen_codes"])


def test_cli_generate_bad_reference_codes(case: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent_runtime.cli import main

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), dtype=np.int64))
    argv = [
        "s2pro", "generate", "--checkpoint", str(case["dir"] / "tiny"), "--text", "hi",
        "--reference-text", "ref", "--reference-codes", str(bad), "--dtype", "fp32", "--out", str(tmp_path / "o.npy"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "expected shape (4, frames)" in err
    assert len(err.strip().splitlines()) == 1
