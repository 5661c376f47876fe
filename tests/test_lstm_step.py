"""Triton step kernels (kernels/lstm_step.py) against the reference LSTM layer.

On a CPU machine these run under TRITON_INTERPRET=1 (the `device` fixture is 'cpu'); shapes are
kept tiny so the whole file takes seconds there.
"""
import pytest
import torch

from _lstm_inputs import make_inputs
from elmo_fast.reference.lstm import lstm_layer_ref
from tolerances import ERR_RATIO, assert_close, assert_lowp_close, err_ratio

lstm_step = pytest.importorskip("elmo_fast.kernels.lstm_step", reason="triton is not installed")

pytestmark = pytest.mark.interpreter

# (B, T, C, P, lengths): lengths include a full row, a length-1 row and an empty row
SHAPES = [
    pytest.param(1, 1, 8, 4, [1], id="B1-T1-C8-P4"),
    pytest.param(3, 5, 8, 4, [5, 1, 0], id="B3-T5-C8-P4"),
    pytest.param(3, 5, 64, 16, [2, 5, 1], id="B3-T5-C64-P16"),
    pytest.param(3, 5, 24, 6, [0, 4, 5], id="B3-T5-C24-P6"),  # widths that are not powers of two
]


def ref64(xproj, w_hh, w_p, lens, h0, c0, cell_clip, proj_clip, reverse):
    return lstm_layer_ref(xproj.double(), w_hh.double(), w_p.double(), lens, h0.double(), c0.double(),
                          cell_clip, proj_clip, reverse)


@pytest.mark.parametrize("B,T,C,P,lengths", SHAPES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("clip", [None, 3.0], ids=["noclip", "clip3"])
def test_fp32_matches_reference(B, T, C, P, lengths, reverse, clip, device):
    xproj, w_hh, w_p, lens, h0, c0 = make_inputs(B, T, C, P, lengths, device)
    out, h, c = lstm_step.lstm_layer_fwd(xproj, w_hh, w_p, lens, h0, c0, clip, clip, reverse)
    ref = lstm_layer_ref(xproj, w_hh, w_p, lens, h0, c0, clip, clip, reverse)
    for name, got, want in zip(("out", "h_T", "c_T"), (out, h, c), ref):
        assert_close(got.cpu(), want.cpu(), torch.float32, msg=name)


@pytest.mark.parametrize("B,T,C,P,lengths", [SHAPES[1], SHAPES[2]])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("clip", [None, 3.0], ids=["noclip", "clip3"])
def test_bf16_within_torch_error(B, T, C, P, lengths, reverse, clip, device):
    bf = torch.bfloat16
    xproj, w_hh, w_p, lens, h0, c0 = make_inputs(B, T, C, P, lengths, device, dtype=bf)
    out, h, c = lstm_step.lstm_layer_fwd(xproj.to(bf), w_hh.to(bf), w_p.to(bf), lens, h0, c0,
                                            clip, clip, reverse)
    assert out.dtype == bf and h.dtype == torch.float32 and c.dtype == torch.float32
    ref = ref64(xproj, w_hh, w_p, lens, h0, c0, clip, clip, reverse)
    torch_bf16 = lstm_layer_ref(xproj.to(bf), w_hh.to(bf), w_p.to(bf), lens, h0.to(bf), c0.to(bf),
                                clip, clip, reverse)
    for name, got, want, base in zip(("out", "h_T", "c_T"), (out, h, c), ref, torch_bf16):
        assert_lowp_close(got.cpu(), want.cpu(), base.cpu(), msg=name)
        assert err_ratio(got.cpu(), want.cpu()) <= ERR_RATIO[bf], name


def test_stateful_continuation(device):
    """h_T, c_T fed back as the next call's state give the reference's chained result."""
    B, T, C, P = 3, 4, 8, 4
    xa, w_hh, w_p, la, h0, c0 = make_inputs(B, T, C, P, [4, 2, 0], device)
    xb, _, _, lb, _, _ = make_inputs(B, T, C, P, [1, 4, 3], device)
    o1, h1, c1 = lstm_step.lstm_layer_fwd(xa, w_hh, w_p, la, h0, c0, 3.0, 3.0)
    o2, h2, c2 = lstm_step.lstm_layer_fwd(xb, w_hh, w_p, lb, h1, c1, 3.0, 3.0)
    r1 = lstm_layer_ref(xa, w_hh, w_p, la, h0, c0, 3.0, 3.0)
    r2 = lstm_layer_ref(xb, w_hh, w_p, lb, r1[1], r1[2], 3.0, 3.0)
    for name, got, want in zip(("out1", "out2", "h", "c"), (o1, o2, h2, c2), (r1[0], r2[0], r2[1], r2[2])):
        assert_close(got.cpu(), want.cpu(), torch.float32, msg=name)


def test_non_contiguous_xproj(device):
    """xproj as a slice of a larger tensor (row stride != T * 4C)."""
    B, T, C, P = 3, 5, 8, 4
    xproj, w_hh, w_p, lens, h0, c0 = make_inputs(B, T + 2, C, P, [5, 1, 3], device)
    view = xproj[:, 1:T + 1]
    assert not view.is_contiguous()
    out, h, c = lstm_step.lstm_layer_fwd(view, w_hh, w_p, lens, h0, c0, None, 3.0, True)
    ref = lstm_layer_ref(view.contiguous(), w_hh, w_p, lens, h0, c0, None, 3.0, True)
    for name, got, want in zip(("out", "h_T", "c_T"), (out, h, c), ref):
        assert_close(got.cpu(), want.cpu(), torch.float32, msg=name)


def test_dispatch_runs_triton_when_forced(device, monkeypatch):
    from elmo_fast.ops.lstm import _op, lstm_layer

    monkeypatch.setenv("ELMO_FAST_BACKEND", "triton")
    args = make_inputs(3, 5, 8, 4, [5, 1, 0], device)
    assert _op.select(**dict(zip(("xproj", "w_hh", "w_p", "lengths", "h0", "c0"), args))).name == "triton"
    out, h, c = lstm_layer(*args, cell_clip=3.0, proj_clip=3.0)
    ref = lstm_layer_ref(*args, 3.0, 3.0)
    assert_close(out.cpu(), ref[0].cpu(), torch.float32, msg="out")


def test_not_supported_reasons():
    names = ("xproj", "w_hh", "w_p", "lengths", "h0", "c0")
    args = dict(zip(names, make_inputs(3, 5, 8, 4, [5, 1, 0], "cpu")))
    # never an automatic choice on the CPU
    assert any("CPU" in r or "cpu" in r for r in lstm_step.not_supported_reasons(args, False))
    bad = dict(args, xproj=args["xproj"].to(torch.float16))
    assert any("float16" in r for r in lstm_step.not_supported_reasons(bad, True))
    bad = dict(args, w_p=args["w_p"][:, :5])
    assert any("shapes" in r for r in lstm_step.not_supported_reasons(bad, True))
