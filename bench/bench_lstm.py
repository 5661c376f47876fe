"""Benchmark of one projected-LSTM layer (issue 4): persistent CUDA kernel, Triton step kernels,
the torch reference, and cuDNN nn.LSTM(proj_size=...) as a speed reference (it cannot clip, so it
is not a substitute).

    python bench/bench_lstm.py --json out.json          # GPU: the measurements below, most important first
    python bench/bench_lstm.py --max-s 60 --json out.json   # stop starting new ones after 60 s
    python bench/bench_lstm.py --models small --batch 1 8 --T 20   # a grid instead (every combination)
    python bench/bench_lstm.py --dry-run                # CPU: reference only, tiny shapes (a smoke test)

Without --batch / --T the measurements follow IMPORTANCE: the original model first (bf16 at a
throughput batch and at batch 1, then fp32), then the other models. The JSON record is rewritten
after every measurement, so a run cut short keeps what it measured.

Reports tokens/s, microseconds per step and achieved TFLOP/s, with FLOPs per step
2*B*(4C*P + P*C) (the recurrent part; the input projections are precomputed), against a bf16
ceiling measured in the same run (a large bf16 torch.matmul). --scope bilm also times the whole
BiLm (2 layers x 2 directions, one after another).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from elmo_fast.reference.lstm import lstm_layer_ref

MODELS = {"original": (4096, 512), "medium": (2048, 256), "small": (1024, 128)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (model, dtype, B, T), most important first: what the end-to-end numbers of the original model
# depend on, then the other precisions and batch sizes, then the smaller models.
IMPORTANCE: List[Tuple[str, str, int, int]] = [
    ("original", "bf16", 256, 50), ("original", "bf16", 1, 20), ("original", "fp32", 256, 50),
    ("original", "bf16", 64, 50), ("original", "fp32", 1, 20), ("original", "bf16", 1024, 50),
    ("medium", "bf16", 256, 50), ("small", "bf16", 256, 50), ("medium", "bf16", 1, 20),
    ("small", "bf16", 1, 20), ("original", "fp32", 64, 50),
]


def do_bench(fn: Callable, device: str) -> List[float]:
    """[median, p20, p80] in milliseconds."""
    if device == "cuda":
        import triton.testing

        return list(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return [times[1], times[0], times[2]]


def bf16_ceiling(device: str) -> float:
    """Measured bf16 matmul TFLOP/s (8192^3 on a GPU)."""
    n = 8192 if device == "cuda" else 256
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, device)[0]
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def layer_inputs(B, T, C, P, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
    return dict(xproj=r(B, T, 4 * C), w_hh=r(4 * C, P, scale=P ** -0.5), w_p=r(P, C, scale=C ** -0.5),
                lengths=torch.full((B,), T, dtype=torch.int64, device=device),
                h0=torch.zeros(B, P, device=device), c0=torch.zeros(B, C, device=device))


def backends(device: str, dry_run: bool) -> Tuple[Dict[str, Callable], Dict[str, str]]:
    """({name: layer function}, {name: why it is missing})."""
    fns, missing = {"reference": lstm_layer_ref}, {}
    if dry_run or device != "cuda":
        return fns, missing
    try:
        from elmo_fast.lstm_cuda import load_extension, lstm_layer_cuda

        load_extension()
        fns["cuda"] = lstm_layer_cuda
    except Exception as exc:  # report, keep benchmarking the others
        missing["cuda"] = f"{type(exc).__name__}: {exc}"
    try:
        from elmo_fast.kernels.lstm_step import lstm_layer_fwd

        fns["triton"] = lstm_layer_fwd
    except Exception as exc:
        missing["triton"] = f"{type(exc).__name__}: {exc}"
    for name, why in missing.items():
        print(f"# {name} backend unavailable: {why}", file=sys.stderr, flush=True)
    return fns, missing


def cudnn_layer(B, T, C, P, dtype, device, bidirectional: bool, layers: int):
    """nn.LSTM(proj_size=P) at the same shape, fed the input projections' width as input
    (input size P, so its own input GEMM is small); timing reference only."""
    lstm = torch.nn.LSTM(P, C, num_layers=layers, proj_size=P, batch_first=True,
                         bidirectional=bidirectional).to(device=device, dtype=dtype)
    x = torch.randn(B, T, P, device=device, dtype=dtype)
    return lambda: lstm(x)


def plan(args) -> List[Tuple[str, int, int, str, int, int]]:
    """[(model, C, P, dtype, B, T)] in the order they run."""
    if args.dry_run:
        return [("tiny", 64, 16, "fp32", B, 5) for B in (1, 3)]
    if args.batch or args.T:  # an explicit grid: every combination, models in the order given
        return [(m, *MODELS[m], d, B, T) for m in args.models for d in args.dtypes
                for B in (args.batch or [1, 8, 64, 256]) for T in (args.T or [20, 50])]
    return [(m, *MODELS[m], d, B, T) for m, d, B, T in IMPORTANCE if m in args.models and d in args.dtypes]


def run(args) -> dict:
    from elmo_fast.bench import write_json

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    t0 = time.perf_counter()
    ceiling = bf16_ceiling(device)
    fns, missing = backends(device, args.dry_run)
    result = dict(meta=meta(device, ceiling), missing_backends=missing, records=[], failed=[],
                  not_run=[], complete=False)

    def flush():
        result["wall_s"] = time.perf_counter() - t0
        if args.json:
            write_json(str(args.json), result)

    flush()
    todo = plan(args)
    for k, (model, C, P, dname, B, T) in enumerate(todo):
        if args.max_s is not None and time.perf_counter() - t0 > args.max_s:
            result["not_run"] = [dict(model=m, dtype=d, B=b, T=t) for m, _, _, d, b, t in todo[k:]]
            print(f"# --max-s {args.max_s} reached: {len(todo) - k} measurements not run", flush=True)
            break
        dtype = DTYPES[dname]
        inp = layer_inputs(B, T, C, P, dtype, device)
        flops_step = 2 * B * (4 * C * P + P * C)
        cases = {name: (lambda f=f, inp=inp: f(**inp, cell_clip=3.0, proj_clip=3.0))
                 for name, f in fns.items()}
        if device == "cuda":
            cases["cudnn"] = cudnn_layer(B, T, C, P, dtype, device, False, 1)
        for scope in args.scope:
            for name, fn in cases.items():
                if scope == "bilm":  # 2 layers x 2 directions, run one after another
                    fn_s = (cudnn_layer(B, T, C, P, dtype, device, True, 2) if name == "cudnn"
                            else (lambda fn=fn: [fn() for _ in range(4)]))
                    n_layers = 4
                else:
                    fn_s, n_layers = fn, 1
                try:
                    ms, lo, hi = do_bench(fn_s, device)
                except Exception as exc:  # one failing backend must not cost the others
                    result["failed"].append(dict(model=model, dtype=dname, B=B, T=T, scope=scope,
                                                 backend=name, error=f"{type(exc).__name__}: {exc}"))
                    print(f"{model:8s} {dname:5s} B={B:4d} T={T:2d} {scope:5s} {name:9s} FAILED: {exc}",
                          flush=True)
                    flush()
                    continue
                steps = T * n_layers
                tflops = flops_step * steps / (ms * 1e-3) / 1e12
                rec = dict(model=model, C=C, P=P, dtype=dname, B=B, T=T, scope=scope, backend=name, ms=ms,
                           ms_p20=lo, ms_p80=hi, tokens_per_s=B * T / (ms * 1e-3),
                           us_per_step=ms * 1e3 / steps, tflops=tflops, frac_of_bf16_ceiling=tflops / ceiling)
                result["records"].append(rec)
                print(f"{model:8s} {dname:5s} B={B:4d} T={T:2d} {scope:5s} {name:9s} "
                      f"{ms:9.3f} ms  {rec['tokens_per_s']:12.0f} tok/s  "
                      f"{rec['us_per_step']:8.2f} us/step  {tflops:7.3f} TFLOP/s "
                      f"({100 * rec['frac_of_bf16_ceiling']:.2f}% of bf16 ceiling)", flush=True)
                flush()
        del inp, cases
        if device == "cuda":
            torch.cuda.empty_cache()
    else:
        result["complete"] = True
    flush()
    return result


def meta(device: str, ceiling: float) -> dict:
    """The shared record of machine, versions and commit, plus this benchmark's ceiling and the
    extension's status."""
    from elmo_fast.bench import environment

    m = environment(torch.device(device))
    m["bf16_ceiling_tflops"] = ceiling
    try:
        from elmo_fast.lstm_cuda import extension_status

        m["extension"] = extension_status()
    except Exception as exc:
        m["extension"] = f"unavailable: {exc}"
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--batch", nargs="+", type=int,
                    help="batch sizes of a grid (default: the IMPORTANCE list)")
    ap.add_argument("--T", nargs="+", type=int, help="lengths of a grid (default: the IMPORTANCE list)")
    ap.add_argument("--scope", nargs="+", default=["layer"], choices=["layer", "bilm"])
    ap.add_argument("--max-s", type=float, default=None,
                    help="start no new measurement after this many seconds")
    ap.add_argument("--json", type=Path, help="write the records here (rewritten after every measurement)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, reference only, tiny shapes")
    args = ap.parse_args(argv)
    result = run(args)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
