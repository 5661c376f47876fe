"""Ahead-of-time compilation of every Triton kernel for an H100 (sm_90), without a GPU.

The kernel tests run under TRITON_INTERPRET=1 when there is no GPU, and the interpreter accepts code
the real compiler rejects (tl.dot operand dtypes or shapes, the bf16 paths the launchers only take on
CUDA) and says nothing about shared memory or registers. Here each kernel goes through Triton's real
NVIDIA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin) for target sm_90, with the argument
types, specialisations and constexprs its launcher would use on a CUDA device (the launchers'
`_launch_config` helpers with device "cuda"), in fp32 and bf16, for the model's real shapes.

Checked per configuration: compilation succeeds, the dynamic shared memory (metadata.shared, what
Triton compares with the device's opt-in limit at load time) plus the cubin's static shared memory
fit the H100's 227 KB per block; and, separately, that ptxas reports no register spills (the
configurations known to spill: no more than the bytes recorded in KNOWN_SPILLS).

The compiler runs in a subprocess: this process has TRITON_INTERPRET=1 set (conftest), which turns
every @triton.jit into an interpreter object; the child imports the kernels with it unset. The child
needs no GPU: Triton's NVIDIA backend and the ptxas shipped in the wheel run on any Linux x86-64 host.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest

H100_SHARED_OPTIN = 232448  # cudaDevAttrMaxSharedMemoryPerBlockOptin on an H100: 227 KB
SM = 90

# Configurations the launchers pick on a GPU for the model's shapes. Compiling takes ~0.5-2 s each.
# char_cnn: the standard 2048-filter encoder (E=16, widths 1..7, 50 chars per token); the width is a
#   runtime value (filter-tile table), so one compile covers every width.
# highway: D=2048. lstm: the original model (C=4096, P=512, a full batch of 64 rows) and the test
#   fixture (C=64, P=16, 3 rows); clips as in the ELMo options (cell_clip=3, proj_clip=3).
CASES: Dict[str, Dict[str, Any]] = {}
for _dt in ("float32", "bfloat16"):
    CASES[f"char_cnn-{_dt}-relu"] = dict(kernel="char_cnn", dtype=_dt, activation="relu")
    CASES[f"highway-{_dt}-D2048"] = dict(kernel="highway", dtype=_dt, D=2048)
    for _name, _b, _c, _p in (("elmo", 64, 4096, 512), ("fixture", 3, 64, 16)):
        for _k in ("gates", "proj"):
            CASES[f"lstm_{_k}-{_dt}-{_name}"] = dict(kernel=f"lstm_{_k}", dtype=_dt, B=_b, C=_c, P=_p)
CASES["char_cnn-bfloat16-tanh"] = dict(kernel="char_cnn", dtype="bfloat16", activation="tanh")
CASES["char_cnn-bfloat16-nopadtrick"] = dict(kernel="char_cnn", dtype="bfloat16", activation="relu",
                                             pad_trick=False)

# Configurations ptxas (CUDA 13.x in triton 3.9) is known to compile with register spills: the
# (spill store, spill load) bytes it reported, all at 255 registers. Spills cost speed, not
# correctness; until the launch configuration is retuned on a GPU these may spill that much and no
# more (more spilling, or spilling in any other configuration, fails the test; lower the numbers
# here when a retune spills less).
KNOWN_SPILLS = {
    "char_cnn-float32-relu": (8, 8),
    "char_cnn-bfloat16-relu": (252, 236),
    "char_cnn-bfloat16-tanh": (272, 256),
}


# ----------------------------------------------------------------------------------------------
# the child process: build each kernel's launch exactly as its launcher does on CUDA, compile it

def _build(case: Dict[str, Any]):
    """(JITFunction, positional args, keyword meta-parameters) for one case; CPU tensors stand in for
    the CUDA ones (only dtype, strides and 16-byte alignment of their addresses matter)."""
    import torch

    from elmo_fast.kernels import char_cnn, highway, lstm_step

    cuda = torch.device("cuda")  # only its .type is read; no CUDA runtime is touched
    dt = getattr(torch, case["dtype"])
    kind = case["kernel"]
    if kind == "char_cnn":
        N, L, E, V = 1000, 50, 16, 262
        widths, counts = range(1, 8), (32, 32, 64, 128, 256, 512, 1024)
        chars = torch.randint(1, V, (N, L), dtype=torch.int64)
        emb = torch.randn(V, E).to(dt)
        weights = [torch.randn(w, E, n).to(dt) for w, n in zip(widths, counts)]
        biases = [torch.randn(n).to(dt) for n in counts]
        trick = case.get("pad_trick", True) and V > char_cnn.PAD_ID
        meta = char_cnn._launch_config(cuda, dt, L, E, case["activation"], trick)
        pack = char_cnn._pack(emb, weights, biases, meta["BLOCK_N"], trick)
        out = torch.empty(N, pack["total"], dtype=dt)
        return char_cnn._char_cnn_fwd_kernel, char_cnn._launch_args(chars, emb, pack, out), meta
    if kind == "highway":
        M, D = 1000, case["D"]
        x, w, b, y = torch.empty(M, D, dtype=dt), torch.empty(D, D, dtype=dt), torch.empty(D, dtype=dt), \
            torch.empty(M, D, dtype=dt)
        meta = highway._launch_config(cuda, dt)
        args = (x, w, b, w, b, y, M, D, x.stride(0), x.stride(1), w.stride(0), w.stride(1), y.stride(0))
        return highway._highway_fwd_kernel, args, meta
    # lstm: the arguments of lstm_layer_triton's two launches, at a generic step s (s == 1 and
    # s % 16 == 0 get their own specialisations at run time; the code is the same)
    B, C, P, T, s = case["B"], case["C"], case["P"], 20, 3
    xproj = torch.empty(B, T, 4 * C, dtype=dt)
    w_hh, w_p = torch.empty(4 * C, P, dtype=dt), torch.empty(P, C, dtype=dt)
    lens = torch.full((B,), T, dtype=torch.int32)
    h, c, m = torch.empty(B, P), torch.empty(B, C), torch.empty(B, C)
    out = torch.empty(B, T, P, dtype=dt)
    gates_meta, proj_meta = lstm_step._launch_config(cuda, dt, B, C, P, 3.0, 3.0, False)
    if kind == "lstm_gates":
        args = (xproj, w_hh, h, c, m, lens, s, B, T, C, P, xproj.stride(0), xproj.stride(1), 3.0)
        return lstm_step._lstm_gates_kernel, args, gates_meta
    args = (m, w_p, h, out, lens, s, B, T, C, P, 3.0)
    return lstm_step._lstm_proj_kernel, args, proj_meta


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def _compile(case: Dict[str, Any]) -> Dict[str, Any]:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel, args, meta = _build(case)
    target = GPUTarget("cuda", SM, 32)
    backend = make_backend(target)
    # the JIT's own argument specialisation (pointer/int divisibility by 16, ints equal to 1 become
    # constexpr), as JITFunction.run does it, but for the sm_90 backend instead of the current device
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, opts = binder(*args, **meta)
    options, signature, constexprs, attrs = kernel._pack_args(backend, dict(meta), bound, spec, opts)
    log = io.StringIO()
    t0 = time.perf_counter()
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v output, printed to stdout
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    res: Dict[str, Any] = dict(seconds=round(time.perf_counter() - t0, 2), shared=compiled.metadata.shared,
                               num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
                               constexprs={kernel.arg_names[k[0]]: v for k, v in constexprs.items()})
    text = log.getvalue()
    if (mo := _PTXAS_USED.search(text)):
        res["n_regs"] = int(mo.group(1))
    if (mo := _PTXAS_SPILL.search(text)):
        res["stack"], res["spill_stores"], res["spill_loads"] = map(int, mo.groups())
    if (mo := _PTXAS_SMEM.search(text)):
        res["static_shared"] = int(mo.group(1))
    return res


def _backend_unavailable() -> str:
    """Why Triton's NVIDIA backend cannot compile for sm_90 here ('' when it can)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(SM).path
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot compile here
        return f"Triton's NVIDIA backend is unavailable: {exc!r}"
    try:
        subprocess.run([ptxas, "--version"], check=True, capture_output=True, timeout=30)
    except Exception as exc:  # noqa: BLE001
        return f"ptxas ({ptxas}) cannot run here: {exc!r}"
    return ""


def _child(names: List[str]) -> Dict[str, Any]:
    why = _backend_unavailable()
    if why:
        return {"skip": why}
    results = {}
    for name in names:
        try:
            results[name] = _compile(CASES[name])
        except Exception as exc:  # noqa: BLE001 - reported per case by the parent
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[-4000:]}
    return {"results": results}


# ----------------------------------------------------------------------------------------------
# the tests

@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Dict[str, Any]:
    cache = tmp_path_factory.mktemp("triton_cache")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # a fresh cache, so every kernel really goes through ptxas (its -v log gives registers/spills)
    env.update(TRITON_CACHE_DIR=str(cache), TRITON_DEFAULT_FP_FUSION=env.get("TRITON_DEFAULT_FP_FUSION", "1"))
    proc = subprocess.run([sys.executable, __file__, *CASES], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"compile worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    return report["results"]


@pytest.mark.parametrize("name", list(CASES))
def test_compiles_for_sm90(compiled, name):
    res = compiled[name]
    assert "error" not in res, f"{name} does not compile for sm_{SM}:\n{res.get('error')}"
    print(f"{name}: {json.dumps(res)}")
    shared = res["shared"]
    assert shared <= H100_SHARED_OPTIN, (
        f"{name}: {shared} B dynamic shared memory > the H100's {H100_SHARED_OPTIN} B per block")
    total = shared + res.get("static_shared", 0)
    assert total <= H100_SHARED_OPTIN, (
        f"{name}: {shared} B dynamic + {res.get('static_shared')} B static shared memory > "
        f"{H100_SHARED_OPTIN} B per block")


@pytest.mark.parametrize("name", list(CASES))
def test_register_spills_within_recorded(compiled, name):
    res = compiled[name]
    if "error" in res:
        pytest.skip("does not compile (see test_compiles_for_sm90)")
    if "spill_stores" not in res:
        pytest.skip("ptxas -v output not found (registers and spills unknown)")
    stores, loads = KNOWN_SPILLS.get(name, (0, 0))
    assert res["spill_stores"] <= stores and res["spill_loads"] <= loads, (
        f"{name}: ptxas spills registers ({res.get('n_regs')} registers, {res['spill_stores']} B spill "
        f"stores, {res['spill_loads']} B spill loads, {res['stack']} B stack frame); recorded: {stores} B "
        f"stores, {loads} B loads")


if __name__ == "__main__":  # the compile worker (see `compiled`); prints one JSON line
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(json.dumps(_child(sys.argv[1:])))
