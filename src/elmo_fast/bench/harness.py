"""How the benchmarks time, compare and steer: timers (device events through do_bench, or
synchronised wall clock), the measured matmul ceiling, the error of an output against a
reference, and the one function that chooses the op backend for a block of code.

Timing: on a GPU, triton.testing.do_bench (median) for calls under ~50 ms, else
torch.cuda.synchronize around time.perf_counter; on the CPU, time.perf_counter. Each measurement
gets a time budget and runs as many repetitions as fit (at least one after a warm-up call).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_calls(fn: Callable[[], Any], device: torch.device, reps: int) -> List[float]:
    """Wall seconds of each of `reps` calls of fn, each synchronised before and after."""
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def time_calls(fn: Callable[[], Any], device: torch.device, budget_s: float, max_reps: int = 50,
               min_reps: int = 1) -> Dict[str, Any]:
    """Per-call seconds of fn: one warm-up call, then as many as fit in budget_s (median, min)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if device.type == "cuda" and first < 0.05:
        try:
            from triton.testing import do_bench
            q = do_bench(fn, warmup=25, rep=max(50, int(budget_s * 1000)), quantiles=[0.5, 0.2, 0.8])
            return {"median_s": q[0] / 1e3, "p20_s": q[1] / 1e3, "p80_s": q[2] / 1e3, "timer": "do_bench",
                    "first_call_s": first}
        except Exception:  # no triton: fall back to the synchronised wall clock below
            pass
    reps = int(max(min_reps, min(max_reps, budget_s // max(first, 1e-6))))
    times = _timed_calls(fn, device, reps)
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": reps,
            "timer": "perf_counter+sync" if device.type == "cuda" else "perf_counter", "first_call_s": first}


def latency(fn: Callable[[], Any], device: torch.device, reps: int) -> Dict[str, float]:
    """p50 / p99 wall time of single calls (each synchronised)."""
    fn()
    times = _timed_calls(fn, device, reps)
    a = np.array(times)
    return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3),
            "mean_ms": float(a.mean() * 1e3), "reps": reps}


def matmul_ceiling(device: torch.device, dtype: torch.dtype, quick: bool) -> Dict[str, Any]:
    """Measured dense matmul rate (FLOP/s) in `dtype` on `device` (random data, never zeros; fp32
    with TF32 off, the rate an exact fp32 path can reach)."""
    n = (512 if quick else 2048) if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with fp32_exact():
        r = time_calls(lambda: a @ b, device, budget_s=0.5 if quick else 2.0, max_reps=20)
    out = {"dtype": str(dtype).replace("torch.", ""), "n": n, "flops_per_s": 2.0 * n ** 3 / r["median_s"],
           "timer": r["timer"], "threads": torch.get_num_threads() if device.type == "cpu" else None}
    if "min_s" in r:  # the best call: the rate the machine reaches when nothing else runs on it
        out["flops_per_s_best"] = 2.0 * n ** 3 / r["min_s"]
    return out


def compare(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> Dict[str, float]:
    """max abs and relative RMS error of out against ref over mask [B, T] positions."""
    m = mask.bool()
    a = out.float()[m]
    b = ref.float()[m]
    if a.numel() == 0:
        return {"max_abs": 0.0, "rel_rms": 0.0}
    d = a - b
    rms_ref = float(b.pow(2).mean().sqrt())
    return {"max_abs": float(d.abs().max()), "rel_rms": float(d.pow(2).mean().sqrt()) / max(rms_ref, 1e-30)}


@contextlib.contextmanager
def fp32_exact() -> Iterator[None]:
    """TF32 off for the block (cuBLAS matmuls and cuDNN convolutions): an fp32 reference computed
    on CUDA must be IEEE fp32, or every error measured against it is inflated."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def _force_backend(name: str, seen: Optional[Dict[str, str]] = None) -> Iterator[None]:
    """Runs the block with op backend `name` (auto | cuda | triton | torch; 'auto' = the
    dispatcher's own choice) and, when `seen` is given, records in it which backend each op ran.
    The only place the benchmarks steer the dispatcher (`elmo_fast.ops.use_backend`)."""
    from .. import ops

    with ops.use_backend(name), ops.record_backends(seen):
        yield
