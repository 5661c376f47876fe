"""The reference LSTM's two implementations (packed no-grad loop, autograd loop) and its CPU GEMM
agree with each other and with a plain fp64 loop written here."""
import contextlib

import pytest
import torch

from elmo_fast._support import one_thread
from elmo_fast.reference import _cpu_gemm
from elmo_fast.reference.lstm import _lstm_autograd, _lstm_packed
from tolerances import assert_close, assert_differs


def naive(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse):
    """Row by row, step by step, in fp64: the definition (out of place, so autograd can run
    through it)."""
    B, T, G = xproj.shape
    C, P = G // 4, w_p.shape[0]
    outs, hs, cs = [], [], []
    for b in range(B):
        h, c = h0[b].double(), c0[b].double()
        row = [torch.zeros(P, dtype=torch.float64)] * T
        n = int(lengths[b])
        for s in range(n):
            t = n - 1 - s if reverse else s
            z = xproj[b, t].double() + w_hh.double() @ h
            i, f, g, o = z[:C].sigmoid(), z[C:2 * C].sigmoid(), z[2 * C:3 * C].tanh(), z[3 * C:].sigmoid()
            c = f * c + i * g
            if cell_clip is not None:
                c = c.clamp(-cell_clip, cell_clip)
            h = w_p.double() @ (o * c.tanh())
            if proj_clip is not None:
                h = h.clamp(-proj_clip, proj_clip)
            row[t] = h
        outs.append(torch.stack(row) if T else torch.zeros(0, P, dtype=torch.float64))
        hs.append(h)
        cs.append(c)
    return torch.stack(outs), torch.stack(hs), torch.stack(cs)


@pytest.mark.parametrize("B,T,C,P,lengths", [
    pytest.param(1, 1, 8, 4, [1], id="B1-T1"),
    pytest.param(3, 7, 24, 8, [7, 1, 0], id="B3-T7-ragged-empty"),
    pytest.param(5, 13, 40, 6, [13, 13, 2, 9, 5], id="B5-T13-C40-P6"),
])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("clip", [None, 0.5], ids=["noclip", "clip0.5"])
# one thread: the packed loop's GEMMs run on the few-rows CPU kernel (test_cpu_kernels.py); more: oneDNN
@pytest.mark.parametrize("one", [False, True], ids=["threads", "1thread"])
def test_reference_lstm_paths_agree(B, T, C, P, lengths, reverse, clip, one):
    x = torch.randn(B, T, 4 * C)
    w_hh, w_p = torch.randn(4 * C, P) / P ** 0.5, torch.randn(P, C) / C ** 0.5
    L = torch.tensor(lengths)
    h0, c0 = torch.randn(B, P), torch.randn(B, C)
    ref = naive(x, w_hh, w_p, L, h0, c0, clip, clip, reverse)
    with torch.no_grad(), (one_thread(x.device) if one else contextlib.nullcontext()):
        packed = _lstm_packed(x, w_hh, w_p, L, h0, c0, clip, clip, reverse)
    plain = _lstm_autograd(x, w_hh, w_p, L, h0, c0, clip, clip, reverse)
    for got in (packed, plain):
        for a, b, name in zip(got, ref, ("out", "h_T", "c_T")):
            assert_close(a, b.float(), msg=name)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
def test_reference_lstm_backward_matches_fp64_autograd(reverse):
    """Gradients of the differentiable reference path (the one training uses) with respect to every
    input, against autograd through the fp64 definition; clips that fire, ragged lengths."""
    B, T, C, P = 3, 6, 16, 6
    x = torch.randn(B, T, 4 * C)
    w_hh, w_p = torch.randn(4 * C, P) / P ** 0.5, torch.randn(P, C) * 2 / C ** 0.5
    L = torch.tensor([6, 2, 0])
    h0, c0 = torch.randn(B, P), torch.randn(B, C)
    leaves = [t.clone().requires_grad_() for t in (x, w_hh, w_p, h0, c0)]
    leaves64 = [t.double().requires_grad_() for t in (x, w_hh, w_p, h0, c0)]
    grads = [torch.randn(B, T, P), torch.randn(B, P), torch.randn(B, C)]
    got = _lstm_autograd(*leaves[:3], L, *leaves[3:], 1.0, 0.5, reverse)
    want = naive(*leaves64[:3], L, *leaves64[3:], 1.0, 0.5, reverse)
    assert_differs(want[0], naive(x, w_hh, w_p, L, h0, c0, None, None, reverse)[0].detach(), torch.float64,
                   msg="clips")
    torch.autograd.backward(got, grads)
    torch.autograd.backward(want, [g.double() for g in grads])
    for name, a, b in zip(("xproj", "w_hh", "w_p", "h0", "c0"), leaves, leaves64):
        assert_close(a.grad, b.grad.float(), msg=f"d/d{name}")


def test_cpu_gemm_matches_mm_and_repacks_on_update():
    w = torch.randn(300, 70)
    x = torch.randn(9, 70)
    f = _cpu_gemm.linear_fn(w)
    assert_close(f(x), (x.double() @ w.double().t()).float())
    w.mul_(2.0)  # in-place change: the packed copy must be refreshed
    assert_close(_cpu_gemm.linear_fn(w)(x), (x.double() @ w.double().t()).float())


def test_cpu_gemm_falls_back_for_grad_and_other_dtypes():
    w = torch.randn(16, 8, requires_grad=True)
    x = torch.randn(3, 8)
    g = torch.randn(3, 16)
    y = _cpu_gemm.linear_fn(w)(x)
    y.backward(g)
    w64 = w.detach().double().requires_grad_()
    (x.double() @ w64.t()).backward(g.double())
    assert_close(w.grad, w64.grad.float(), msg="d/dw")
    wd = torch.randn(16, 8, dtype=torch.float64)
    assert _cpu_gemm.linear_fn(wd)(x.double()).dtype == torch.float64


def test_cpu_gemm_accepts_inference_tensors():
    """Weights created under torch.inference_mode (e.g. a model built inside it) have no version
    counter: the packed-weight cache must not touch it, and the product must still be right."""
    with torch.inference_mode():
        w = torch.randn(40, 24)
    x = torch.randn(5, 24)
    assert_close(_cpu_gemm.linear_fn(w)(x), (x.double() @ w.double().t()).float())
    with torch.inference_mode():
        w.mul_(2.0)  # an in-place change that no version counter records
    assert_close(_cpu_gemm.linear_fn(w)(x), (x.double() @ w.double().t()).float())


def test_cpu_gemm_packed_for_trainable_weights_under_no_grad():
    w = torch.randn(40, 12, requires_grad=True)
    x = torch.randn(3, 12)
    with torch.no_grad():
        y = _cpu_gemm.linear_fn(w)(x)
    assert_close(y, (x.double() @ w.detach().double().t()).float())


def test_cpu_gemm_bias_and_tf_layout():
    w_in_out = torch.randn(70, 300)  # [in, out], the highway weights' layout
    b = torch.randn(300)
    x = torch.randn(9, 70)
    want = (x.double() @ w_in_out.double() + b.double()).float()
    assert_close(_cpu_gemm.linear_fn(w_in_out, b, in_out=True)(x), want)
    w = w_in_out.t().contiguous()  # [out, in]: the same map in nn.Linear layout
    assert_close(_cpu_gemm.linear_fn(w, b)(x), want)
    # the packed weight is shared by calls with and without a bias
    assert_close(_cpu_gemm.linear_fn(w_in_out, None, in_out=True)(x),
                 (x.double() @ w_in_out.double()).float())
