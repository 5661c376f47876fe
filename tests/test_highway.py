"""Triton highway (fused gate epilogue) + projection vs the PyTorch reference."""
from __future__ import annotations

import pytest
import torch

from elmo_fast.reference.highway import highway_ref
from tolerances import assert_close, assert_lowp_close

# every test here runs or imports the Triton kernels (skipped only when triton is absent, conftest)
pytestmark = pytest.mark.interpreter


def make_params(D: int, P: int, n_layers: int, dtype=torch.float32, device="cpu"):
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    layers = [tuple(cast(t) for t in (torch.randn(D, D) / D ** 0.5, torch.randn(D),
                                      torch.randn(D, D) / D ** 0.5, 0.5 * torch.randn(D)))
              for _ in range(n_layers)]
    return layers, cast(torch.randn(D, P) / D ** 0.5), cast(0.1 * torch.randn(P))


def check(out, x, layers, w_proj, b_proj, msg=""):
    if x.dtype == torch.float32:
        assert_close(out, highway_ref(x, layers, w_proj, b_proj), msg=msg)
    else:
        d = lambda t: t.double()  # noqa: E731
        ref64 = highway_ref(d(x), [tuple(map(d, layer)) for layer in layers], d(w_proj), d(b_proj))
        assert out.dtype == x.dtype
        assert_lowp_close(out, ref64, highway_ref(x, layers, w_proj, b_proj), msg=msg)


CASES = [
    # D = 124: the fixture model (4+8+16+32+64 filters), two highway layers
    pytest.param(7, 124, 16, 2, id="N7-D124-P16-L2-fixture"),
    pytest.param(45, 124, 16, 2, id="N45-D124-P16-L2-fixture"),
    pytest.param(1, 200, 48, 1, id="N1-D200-P48-L1"),
    pytest.param(5, 2048, 128, 1, id="N5-D2048-P128-L1-small"),
    # interpreter blocks 32x128x128, GROUP_M 4: 5 row tiles = one full group + a partial one, 2 column
    # tiles and 2 K iterations, each with a partial last tile
    pytest.param(137, 130, 16, 1, id="N137-D130-P16-L1-groups"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, D, P, n_layers", CASES)
def test_highway_matches_reference(n, D, P, n_layers, dtype, device):
    from elmo_fast.kernels.highway import highway_fwd

    x = torch.randn(n, D).to(device=device, dtype=dtype)
    layers, w_proj, b_proj = make_params(D, P, n_layers, dtype, device)
    check(highway_fwd(x, layers, w_proj, b_proj), x, layers, w_proj, b_proj)


def test_highway_through_op_strided(monkeypatch, device):
    """Forced through the op; x a non-contiguous slice, weights transposed views."""
    from elmo_fast.ops import _dispatch
    from elmo_fast.ops.highway import highway

    monkeypatch.setenv("ELMO_FAST_BACKEND", "triton")
    D, P = 124, 16
    x = torch.randn(19, 2 * D, device=device)[:, 1::2]
    layers, w_proj, b_proj = make_params(D, P, 2, device=device)
    layers = [(wc.t().contiguous().t(), bc, wt.t().contiguous().t(), bt) for wc, bc, wt, bt in layers]
    assert _dispatch.OPS["highway"].select(x=x, layers=layers, w_proj=w_proj, b_proj=b_proj).name == "triton"
    check(highway(x, layers, w_proj, b_proj), x, layers, w_proj, b_proj)


@pytest.mark.parametrize("dtype", DTYPES)
def test_highway_gpu_tile_config_under_interpreter(dtype, device, monkeypatch):
    """The blocks the launcher picks on a GPU (64x64x32 fp32, 128x64x64 bf16, GROUP_M 8), run for
    numbers: 2+ row tiles, 3 column tiles and 3+ K iterations, partial last tiles on every axis."""
    from elmo_fast.kernels import highway as k

    real = k._block_config
    gpu = real(torch.device("cuda"), dtype)
    monkeypatch.setattr(k, "_block_config", lambda device, dtype: real(torch.device("cuda"), dtype))
    M, D = gpu["BLOCK_M"] + 2, 2 * gpu["BLOCK_N"] + 2
    assert D > 2 * gpu["BLOCK_K"]
    x = torch.randn(M, D).to(device=device, dtype=dtype)
    layers, w_proj, b_proj = make_params(D, 8, 1, dtype, device)
    assert k._launch_config(torch.device(device), dtype)["BLOCK_M"] == gpu["BLOCK_M"]
    check(k.highway_fwd(x, layers, w_proj, b_proj), x, layers, w_proj, b_proj)


def test_not_supported_reasons():
    from elmo_fast.kernels.highway import not_supported_reasons

    x = torch.randn(3, 8)
    layers, w_proj, b_proj = make_params(8, 4, 1)
    good = dict(x=x, layers=layers, w_proj=w_proj, b_proj=b_proj)
    assert not_supported_reasons(good, forced=False)  # CPU tensors: never chosen automatically
    bad = dict(good, x=x.double(), layers=[(layers[0][0][:4],) + layers[0][1:]])
    text = " ".join(not_supported_reasons(bad, forced=True))
    assert "float64" in text and "layers[0]" in text


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_layers, P", [(1, 128), (1, 256), (2, 512)])
def test_highway_gpu_realistic(n_layers, P, dtype):
    from elmo_fast.kernels.highway import highway_fwd

    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # an fp32 reference, not a TF32 one
    try:
        x = torch.randn(65536, 2048, device="cuda").to(dtype)
        layers, w_proj, b_proj = make_params(2048, P, n_layers, dtype, "cuda")
        check(highway_fwd(x, layers, w_proj, b_proj), x, layers, w_proj, b_proj)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
