"""Benchmark of one projected-LSTM layer (issue 4): persistent CUDA kernel, Triton step kernels,
the torch reference, and cuDNN nn.LSTM(proj_size=...) as a speed reference (it cannot clip, so it
is not a substitute). Per layer-direction and for the whole BiLm (2 layers x 2 directions).

    python bench/bench_lstm.py                      # GPU: every model, B in 1 8 64 256, T in 20 50
    python bench/bench_lstm.py --json out.json
    python bench/bench_lstm.py --dry-run            # CPU: reference only, tiny shapes (a smoke test)

Reports tokens/s, microseconds per step and achieved TFLOP/s, with FLOPs per step
2*B*(4C*P + P*C) (the recurrent part; the input projections are precomputed), against a bf16
ceiling measured in the same run (a large bf16 torch.matmul).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from elmo_fast.reference.lstm import lstm_layer_ref  # noqa: E402

MODELS = {"small": (1024, 128), "medium": (2048, 256), "original": (4096, 512)}


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


def backends(device: str, dry_run: bool) -> Dict[str, Callable]:
    fns = {"reference": lstm_layer_ref}
    if dry_run or device != "cuda":
        return fns
    try:
        from elmo_fast.lstm_cuda import lstm_layer_cuda, load_extension

        load_extension()
        fns["cuda"] = lstm_layer_cuda
    except Exception as exc:  # report, keep benchmarking the others
        print(f"# cuda backend unavailable: {exc}", file=sys.stderr)
    try:
        from elmo_fast.kernels.lstm_step import lstm_layer_triton

        fns["triton"] = lstm_layer_triton
    except Exception as exc:
        print(f"# triton backend unavailable: {exc}", file=sys.stderr)
    return fns


def cudnn_layer(B, T, C, P, dtype, device, bidirectional: bool, layers: int):
    """nn.LSTM(proj_size=P) at the same shape, fed the input projections' width as input
    (input size P, so its own input GEMM is small); timing reference only."""
    lstm = torch.nn.LSTM(P, C, num_layers=layers, proj_size=P, batch_first=True,
                         bidirectional=bidirectional).to(device=device, dtype=dtype)
    x = torch.randn(B, T, P, device=device, dtype=dtype)
    return lambda: lstm(x)


def run(args) -> dict:
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if args.dry_run:
        models, batches, lengths_t, dtypes = {"tiny": (64, 16)}, [1, 3], [5], [torch.float32]
    else:
        models = {k: MODELS[k] for k in args.models}
        batches, lengths_t = args.batch, args.T
        dtypes = [torch.bfloat16, torch.float32]
    ceiling = bf16_ceiling(device)
    records = []
    for model, (C, P) in models.items():
        for dtype in dtypes:
            fns = backends(device, args.dry_run)
            for B in batches:
                for T in lengths_t:
                    inp = layer_inputs(B, T, C, P, dtype, device)
                    flops_step = 2 * B * (4 * C * P + P * C)
                    cases = {name: (lambda f=f: f(**inp, cell_clip=3.0, proj_clip=3.0)) for name, f in fns.items()}
                    if device == "cuda":
                        cases["cudnn"] = cudnn_layer(B, T, C, P, dtype, device, False, 1)
                    for scope in ("layer", "bilm"):
                        for name, fn in cases.items():
                            if scope == "bilm":  # 2 layers x 2 directions, run one after another
                                if name == "cudnn":
                                    fn_s = cudnn_layer(B, T, C, P, dtype, device, True, 2)
                                else:
                                    fn_s = (lambda fn=fn: [fn() for _ in range(4)])
                                n_layers = 4
                            else:
                                fn_s, n_layers = fn, 1
                            ms, lo, hi = do_bench(fn_s, device)
                            steps = T * n_layers
                            tflops = flops_step * steps / (ms * 1e-3) / 1e12
                            rec = dict(model=model, C=C, P=P, dtype=str(dtype).replace("torch.", ""), B=B, T=T,
                                       scope=scope, backend=name, ms=ms, ms_p20=lo, ms_p80=hi,
                                       tokens_per_s=B * T / (ms * 1e-3), us_per_step=ms * 1e3 / steps,
                                       tflops=tflops, frac_of_bf16_ceiling=tflops / ceiling)
                            records.append(rec)
                            print(f"{model:8s} {rec['dtype']:8s} B={B:3d} T={T:2d} {scope:5s} {name:9s} "
                                  f"{ms:9.3f} ms  {rec['tokens_per_s']:12.0f} tok/s  "
                                  f"{rec['us_per_step']:8.2f} us/step  {tflops:7.3f} TFLOP/s "
                                  f"({100 * rec['frac_of_bf16_ceiling']:.2f}% of bf16 ceiling)")
    return dict(meta=meta(device, ceiling), records=records)


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
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8, 64, 256])
    ap.add_argument("--T", nargs="+", type=int, default=[20, 50])
    ap.add_argument("--json", type=Path, help="write the records here")
    ap.add_argument("--dry-run", action="store_true", help="CPU, reference only, tiny shapes")
    args = ap.parse_args(argv)
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
