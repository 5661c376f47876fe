"""Triton step kernels (kernels/lstm_step.py) against the reference LSTM layer.

On a CPU machine these run under TRITON_INTERPRET=1 (the `device` fixture is 'cpu'). Most shapes are
tiny; one (MULTI_TILE) is the smallest that spans two tiles of every grid axis and two K-loop
iterations of both kernels at the launch configuration `_launch_config` picks (64-wide blocks), so
it also runs the GPU's 64x64 gates tile for numbers.

Every clipped case uses clips that fire: `clipped_reference` checks that removing either clip changes
the reference result by more than the tolerance, so a kernel that skipped a clip fails.
"""
import pytest
import torch

from _lstm_clip import CELL_CLIP, PROJ_CLIP, clipped_reference
from _lstm_inputs import make_inputs
from elmo_fast.reference.lstm import lstm_layer_ref
from tolerances import ERR_RATIO, assert_close, assert_differs, assert_lowp_close, err_ratio

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]')")
# triton is there: from here on a missing or broken kernel module is an error, never a skip
from elmo_fast.kernels import lstm_step  # noqa: E402

pytestmark = pytest.mark.interpreter

CLIPS = [pytest.param(None, None, id="noclip"), pytest.param(CELL_CLIP, PROJ_CLIP, id="clip")]

MT_B, MT_T, MT_C, MT_P = 67, 3, 72, 66
# every length 0..T, rows past the first batch tile included
MULTI_TILE = pytest.param(MT_B, MT_T, MT_C, MT_P, [(3 * b + 1) % (MT_T + 1) for b in range(MT_B)],
                          id="B67-T3-C72-P66-2x2tiles-2K")

# (B, T, C, P, lengths): lengths include a full row, a length-1 row and an empty row
SHAPES = [
    pytest.param(1, 1, 8, 4, [1], id="B1-T1-C8-P4"),
    pytest.param(3, 5, 8, 4, [5, 1, 0], id="B3-T5-C8-P4"),
    pytest.param(3, 5, 64, 16, [2, 5, 1], id="B3-T5-C64-P16"),
    pytest.param(3, 5, 24, 6, [0, 4, 5], id="B3-T5-C24-P6"),  # widths that are not powers of two
    MULTI_TILE,
]


def test_multi_tile_shape_spans_tiles_and_k_loops():
    """MULTI_TILE really gives a grid of 2+ programs on each axis and 2+ K iterations in both
    kernels at the launch configuration in use (retuned blocks must come with a new shape)."""
    gates, proj = lstm_step._launch_config(torch.device("cpu"), torch.float32, MT_B, MT_C, MT_P,
                                           CELL_CLIP, PROJ_CLIP, False)
    assert -(-MT_B // gates["BLOCK_B"]) >= 2 and -(-MT_C // gates["BLOCK_C"]) >= 2, gates
    assert -(-MT_P // gates["BLOCK_K"]) >= 2, gates  # K loop of the gates kernel runs over P
    assert -(-MT_B // proj["BLOCK_B"]) >= 2 and -(-MT_P // proj["BLOCK_P"]) >= 2, proj
    assert -(-MT_C // proj["BLOCK_K"]) >= 2, proj  # K loop of the projection kernel runs over C
    assert MT_B % gates["BLOCK_B"] and MT_C % gates["BLOCK_C"] and MT_P % proj["BLOCK_P"]  # partial tiles
    gpu_gates, _ = lstm_step._launch_config(torch.device("cuda"), torch.float32, MT_B, MT_C, MT_P,
                                            CELL_CLIP, PROJ_CLIP, False)
    assert (gpu_gates["BLOCK_B"], gpu_gates["BLOCK_C"]) == (gates["BLOCK_B"], gates["BLOCK_C"]) == (64, 64)


@pytest.mark.parametrize("B,T,C,P,lengths", SHAPES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("cell_clip,proj_clip", CLIPS)
def test_fp32_matches_reference(B, T, C, P, lengths, reverse, cell_clip, proj_clip, device):
    xproj, w_hh, w_p, lens, h0, c0 = make_inputs(B, T, C, P, lengths, device)
    out, h, c = lstm_step.lstm_layer_fwd(xproj, w_hh, w_p, lens, h0, c0, cell_clip, proj_clip, reverse)
    ref = lstm_layer_ref(xproj, w_hh, w_p, lens, h0, c0, cell_clip, proj_clip, reverse)
    clipped_reference(xproj, w_hh, w_p, lens, h0, c0, cell_clip, proj_clip, reverse)
    for name, got, want in zip(("out", "h_T", "c_T"), (out, h, c), ref):
        assert_close(got.cpu(), want.cpu(), torch.float32, msg=name)


@pytest.mark.parametrize("B,T,C,P,lengths", [SHAPES[1], SHAPES[2], MULTI_TILE])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("cell_clip,proj_clip", CLIPS)
def test_bf16_within_torch_error(B, T, C, P, lengths, reverse, cell_clip, proj_clip, device):
    bf = torch.bfloat16
    xproj, w_hh, w_p, lens, h0, c0 = make_inputs(B, T, C, P, lengths, device, dtype=bf)
    out, h, c = lstm_step.lstm_layer_fwd(xproj.to(bf), w_hh.to(bf), w_p.to(bf), lens, h0, c0,
                                            cell_clip, proj_clip, reverse)
    assert out.dtype == bf and h.dtype == torch.float32 and c.dtype == torch.float32
    ref = clipped_reference(xproj, w_hh, w_p, lens, h0, c0, cell_clip, proj_clip, reverse)
    torch_bf16 = lstm_layer_ref(xproj.to(bf), w_hh.to(bf), w_p.to(bf), lens, h0.to(bf), c0.to(bf),
                                cell_clip, proj_clip, reverse)
    for name, got, want, base in zip(("out", "h_T", "c_T"), (out, h, c), ref, torch_bf16):
        assert_lowp_close(got.cpu(), want, base.cpu(), msg=name)
        assert err_ratio(got.cpu(), want) <= ERR_RATIO[bf], name


def test_stateful_continuation(device):
    """h_T, c_T fed back as the next call's state give the reference's chained result (and the
    carried state matters: a zero state gives a different second call)."""
    B, T, C, P = 3, 4, 8, 4
    xa, w_hh, w_p, la, h0, c0 = make_inputs(B, T, C, P, [4, 2, 0], device)
    xb, _, _, lb, _, _ = make_inputs(B, T, C, P, [1, 4, 3], device)
    clips = (CELL_CLIP, PROJ_CLIP)
    o1, h1, c1 = lstm_step.lstm_layer_fwd(xa, w_hh, w_p, la, h0, c0, *clips)
    o2, h2, c2 = lstm_step.lstm_layer_fwd(xb, w_hh, w_p, lb, h1, c1, *clips)
    r1 = lstm_layer_ref(xa, w_hh, w_p, la, h0, c0, *clips)
    r2 = clipped_reference(xb, w_hh, w_p, lb, r1[1], r1[2], *clips)
    fresh = lstm_layer_ref(xb, w_hh, w_p, lb, torch.zeros_like(h0), torch.zeros_like(c0), *clips)
    assert_differs(fresh[0].cpu(), r2[0].float(), msg="carried state")
    for name, got, want in zip(("out1", "out2", "h", "c"), (o1, o2, h2, c2), (r1[0], r2[0], r2[1], r2[2])):
        assert_close(got.cpu(), want.cpu().float(), torch.float32, msg=name)


def test_non_contiguous_xproj(device):
    """xproj as a slice of a larger tensor (row stride != T * 4C)."""
    B, T, C, P = 3, 5, 8, 4
    xproj, w_hh, w_p, lens, h0, c0 = make_inputs(B, T + 2, C, P, [5, 1, 3], device)
    view = xproj[:, 1:T + 1]
    assert not view.is_contiguous()
    out, h, c = lstm_step.lstm_layer_fwd(view, w_hh, w_p, lens, h0, c0, None, PROJ_CLIP, True)
    ref = clipped_reference(view, w_hh, w_p, lens, h0, c0, None, PROJ_CLIP, True)
    for name, got, want in zip(("out", "h_T", "c_T"), (out, h, c), ref):
        assert_close(got.cpu(), want.float(), torch.float32, msg=name)


def test_dispatch_runs_triton_when_forced(device, monkeypatch):
    from elmo_fast.ops.lstm import _op, lstm_layer

    monkeypatch.setenv("ELMO_FAST_BACKEND", "triton")
    args = make_inputs(3, 5, 8, 4, [5, 1, 0], device)
    assert _op.select(**dict(zip(("xproj", "w_hh", "w_p", "lengths", "h0", "c0"), args))).name == "triton"
    out, h, c = lstm_layer(*args, cell_clip=CELL_CLIP, proj_clip=PROJ_CLIP)
    ref = lstm_layer_ref(*args, CELL_CLIP, PROJ_CLIP)
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
