"""The one tolerance table. Every kernel-vs-reference comparison goes through these helpers.

fp32: a kernel must match the fp32 reference within TOL[torch.float32] (relative + absolute).
bf16 (and fp16): the flash-attention rule. The kernel's error against an fp64 oracle may be at most
LOWP_FACTOR times the error PyTorch itself makes doing the same op in that dtype, plus a floor for
values where PyTorch happens to be exact. Recurrences also check the relative RMS error
(fla's get_err_ratio), since errors grow with sequence length.
"""
from __future__ import annotations

import torch

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}
LOWP_FACTOR = 2.0
# half an ulp at the output scale: covers elements where PyTorch happens to be exact
LOWP_FLOOR = {torch.bfloat16: 4e-3, torch.float16: 5e-4}
# relative RMS error allowed for a low-precision recurrence against the fp64 oracle
ERR_RATIO = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-5}


def err_ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_rms / ||ref||_rms in fp64."""
    out, ref = out.double(), ref.double()
    return float((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30))


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype = torch.float32, msg: str = ""):
    """fp32/fp64: element-wise closeness with the table's tolerance for `dtype`."""
    assert out.shape == ref.shape, f"{msg} shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{msg} output has NaNs (unwritten elements?)"
    torch.testing.assert_close(out.to(ref.dtype), ref, **TOL[dtype], msg=lambda m: f"{msg}\n{m}")


def assert_lowp_close(out: torch.Tensor, ref64: torch.Tensor, torch_lowp: torch.Tensor, msg: str = ""):
    """Low precision: max|out - ref64| <= LOWP_FACTOR * max|torch_lowp - ref64| + floor."""
    assert out.shape == ref64.shape, f"{msg} shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(out).any(), f"{msg} output has NaNs (unwritten elements?)"
    floor = LOWP_FLOOR[torch_lowp.dtype] * max(1.0, ref64.abs().max().item())
    err = (out.double() - ref64.double()).abs().max().item()
    base = (torch_lowp.double() - ref64.double()).abs().max().item()
    assert err <= LOWP_FACTOR * base + floor, (
        f"{msg} low-precision error {err:.3e} > {LOWP_FACTOR} x torch's own {base:.3e} (+ floor)"
    )


def assert_differs(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32, msg: str = ""):
    """a and b are further apart than TOL[dtype] allows, so a check with the table's tolerance tells
    them apart. Used to show that a test input exercises what it names (a clip that fires, a state
    that matters): a kernel that skipped the clip would then fail its comparison."""
    assert a.shape == b.shape, f"{msg} shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert not torch.allclose(a.to(b.dtype), b, **TOL[dtype]), (
        f"{msg}: the two results agree within the tolerance, so this input cannot catch the difference")
