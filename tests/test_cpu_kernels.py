"""The CPU few-rows GEMM (csrc/cpu/few_rows_gemm.cpp via elmo_fast.reference._cpu_gemm.few_rows_fn)
against an fp64 x @ w.t(): odd row counts (partial 6-row tiles), odd K (partial 256 chunks), odd N
(the zero-padded last 16-column panel), strided rows, accumulate on and off, poisoned outputs."""
import platform

import pytest
import torch

from elmo_fast._support import one_thread
from elmo_fast.reference import _cpu_gemm
from tolerances import assert_close


def _cpu_has_avx2_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


X86 = platform.machine().lower() in ("x86_64", "amd64")
needs_kernel = pytest.mark.skipif(not (X86 and _cpu_has_avx2_fma()),
                                  reason="the CPU kernels are x86-64 AVX2/FMA only")


@needs_kernel
def test_kernel_is_built_here():
    # on an x86-64 AVX2 machine `pip install -e .` builds it; without it the CPU path is slower
    assert _cpu_gemm.cpu_kernels() is not None, (
        f"elmo_fast._cpu_kernels: {_cpu_gemm.cpu_kernels_status()}: reinstall with `pip install -e .` "
        "(needs a C++ compiler; ELMO_FAST_BUILD_CPU=1 makes a failed build an error)")


def _problem(n, K, N, pad_rows, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) / max(1, K) ** 0.5
    xbig = torch.randn(n, K + pad_rows, generator=g)
    x = xbig[:, :K]                                          # row stride K + pad_rows
    return w, x


@needs_kernel
@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 13, 33])
@pytest.mark.parametrize("K,N", [(1, 1), (3, 16), (256, 17), (257, 40), (600, 15), (512, 64)])
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "accumulate"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_few_rows_gemm_matches_fp64(n, K, N, accumulate, strided):
    pad = 5 if strided else 0
    w, x = _problem(n, K, N, pad, seed=n * 1000 + K * 10 + N)
    init = torch.randn(n, N)
    # out is a column window of a poisoned parent: the columns around it must stay untouched
    parent = torch.full((n, N + 2 * pad), float("nan"))
    out = parent[:, pad: pad + N]
    if accumulate:
        out.copy_(init)
    expect = x.double() @ w.double().t() + (init.double() if accumulate else 0)
    with one_thread(torch.device("cpu")):
        f = _cpu_gemm.few_rows_fn(w)
        got = f(x, out, accumulate=accumulate)
    assert got.data_ptr() == out.data_ptr()
    assert_close(out, expect.float(), msg=f"n={n} K={K} N={N}")
    if pad:
        assert torch.isnan(parent[:, :pad]).all() and torch.isnan(parent[:, pad + N:]).all(), \
            "the kernel wrote outside out's columns"


@needs_kernel
def test_few_rows_fn_uses_the_kernel_on_one_thread_only():
    w, x = _problem(4, 32, 48, 0, seed=1)
    out = torch.empty(4, 48)
    calls = []
    real = _cpu_gemm.cpu_kernels()

    class Spy:
        PANEL = real.PANEL

        @staticmethod
        def gemm(*args):
            calls.append(args)
            return real.gemm(*args)

    _cpu_gemm._KERNELS["module"] = Spy
    try:
        with one_thread(torch.device("cpu")):
            _cpu_gemm.few_rows_fn(w)(x, out)
        assert len(calls) == 1
        if torch.get_num_threads() > 1:   # several threads: oneDNN's threaded GEMM, same values
            out2 = torch.full((4, 48), float("nan"))
            _cpu_gemm.few_rows_fn(w)(x, out2)
            assert len(calls) == 1
            assert_close(out2, out)
    finally:
        _cpu_gemm._KERNELS["module"] = real
    assert_close(out, (x.double() @ w.double().t()).float())


@needs_kernel
def test_few_rows_fn_repacks_when_the_weight_changes_in_place():
    w, x = _problem(3, 20, 20, 0, seed=2)
    out = torch.empty(3, 20)
    with one_thread(torch.device("cpu")):
        _cpu_gemm.few_rows_fn(w)(x, out)
        w.mul_(-2.0)
        _cpu_gemm.few_rows_fn(w)(x, out)
    assert_close(out, (x.double() @ w.double().t()).float())


@needs_kernel
@pytest.mark.parametrize("bad", ["dtype", "K", "out_shape", "column_stride"])
def test_few_rows_fn_rejects_bad_arguments(bad):
    w, x = _problem(3, 8, 16, 0, seed=3)
    out = torch.empty(3, 16)
    if bad == "dtype":
        x = x.double()
    elif bad == "K":
        x = torch.randn(3, 9)
    elif bad == "out_shape":
        out = torch.empty(3, 17)
    else:
        out = torch.empty(16, 3).t()
    with one_thread(torch.device("cpu")), pytest.raises(ValueError, match="few_rows_fn"):
        _cpu_gemm.few_rows_fn(w)(x, out)


def test_few_rows_fn_falls_back_for_grad_and_other_dtypes():
    # the fallback (oneDNN / torch.mm) for what the kernel does not take: same contract
    w = torch.randn(16, 8, dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    out = torch.ones(3, 16, dtype=torch.float64)
    with one_thread(torch.device("cpu")):
        _cpu_gemm.few_rows_fn(w)(x, out, accumulate=True)
    torch.testing.assert_close(out, 1 + x @ w.t())
    wg = torch.randn(16, 8, requires_grad=True)
    with one_thread(torch.device("cpu")):
        y = _cpu_gemm.few_rows_fn(wg)(x.float(), torch.empty(3, 16))
    assert_close(y.detach(), (x @ wg.detach().double().t()).float())


# ------------------------------------------------------------------ the fused cell update (lstm_cell.cpp)
def _cell_fp64(gates, c, cell_clip):
    g, c = gates.double(), c.double()
    C = c.shape[1]
    i, f = g[:, :C].sigmoid(), g[:, C:2 * C].sigmoid()
    gg, o = g[:, 2 * C:3 * C].tanh(), g[:, 3 * C:].sigmoid()
    c = f * c + i * gg
    if cell_clip is not None:
        c = c.clamp(-cell_clip, cell_clip)
    return c, o * c.tanh()


@needs_kernel
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("C", [1, 7, 8, 9, 40])
@pytest.mark.parametrize("cell_clip", [None, 0.7], ids=["noclip", "clip"])
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["unit", "saturating"])
def test_cell_update_matches_fp64(n, C, cell_clip, scale):
    from elmo_fast.reference._cpu_cell import cell_update_fn

    g = torch.Generator().manual_seed(n * 100 + C)
    # gates as rows of a wider buffer (row stride > 4C, as a slice of the packed gates may be)
    gates = (torch.randn(n, 4 * C + 3, generator=g) * scale)[:, : 4 * C]
    c = torch.randn(n, C, generator=g) * (3.0 if scale > 1 else 1.0)
    want_c, want_out = _cell_fp64(gates, c, cell_clip)
    out = torch.full((n, C), float("nan"))
    with one_thread(torch.device("cpu")):
        fn = cell_update_fn(torch.device("cpu"), torch.float32)
        assert fn.__name__ == "run", "the kernel was not chosen on one thread"
        got = fn(gates, c, out, cell_clip)
    assert got.data_ptr() == out.data_ptr()
    assert_close(c, want_c.float(), msg="c")
    assert_close(out, want_out.float(), msg="out")


@needs_kernel
def test_cell_update_is_used_by_the_recurrence_and_matches_the_torch_ops():
    # the same packed recurrence with the kernel and with the reference update: fp32 rounding apart
    from elmo_fast.reference import _cpu_cell, lstm

    B, T, C, P = 4, 9, 24, 8
    x = torch.randn(B, T, 4 * C)
    w_hh, w_p = torch.randn(4 * C, P) / P ** 0.5, torch.randn(P, C) / C ** 0.5
    L, h0, c0 = torch.tensor([9, 4, 1, 7]), torch.randn(B, P), torch.randn(B, C)
    used = []
    real = _cpu_cell.cell_update_fn

    def spy(device, dtype):
        fn = real(device, dtype)
        used.append(fn.__name__)
        return fn

    with torch.no_grad(), one_thread(torch.device("cpu")):
        lstm.cell_update_fn = spy
        try:
            got = lstm._lstm_packed(x, w_hh, w_p, L, h0, c0, 1.5, 1.5, False)
        finally:
            lstm.cell_update_fn = real
        lstm.cell_update_fn = lambda device, dtype: _cpu_cell.cell_update_ref
        try:
            ref = lstm._lstm_packed(x, w_hh, w_p, L, h0, c0, 1.5, 1.5, False)
        finally:
            lstm.cell_update_fn = real
    assert used == ["run"]
    for a, b, name in zip(got, ref, ("out", "h_T", "c_T")):
        assert_close(a, b, msg=name)


@needs_kernel
def test_cell_update_rejects_bad_rows():
    from elmo_fast.reference._cpu_cell import cell_update_fn

    with one_thread(torch.device("cpu")):
        fn = cell_update_fn(torch.device("cpu"), torch.float32)
        with pytest.raises(ValueError, match="cell_update"):
            fn(torch.randn(2, 15), torch.randn(2, 4), torch.empty(2, 4), None)   # gates not 4C wide
        with pytest.raises(ValueError, match="cell_update"):
            fn(torch.randn(2, 16), torch.randn(4, 2).t(), torch.empty(2, 4), None)  # strided elements
