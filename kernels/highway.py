"""Highway layers with a fused gate epilogue, then the projection.

Per layer one kernel computes, for a [BLOCK_M, BLOCK_N] output tile, both GEMMs against the same
streamed x tile (carry: x Wc, transform: x Wt; two fp32 accumulators) and finishes in registers:
    g = sigmoid(x Wc + bc);  y = g * relu(x Wt + bt) + (1 - g) * x
so the two [N, D] pre-activations never reach memory (the unfused path writes and re-reads them,
plus the gate arithmetic as separate element-wise passes). The projection is a plain GEMM with
bias: torch.addmm (cuBLAS) — it has no epilogue worth fusing, and cuBLAS is at least as fast as a
Triton GEMM for one [N, D] x [D, P] product.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import triton
import triton.language as tl

from elmo_fast._support import Support, highway_sizes
from elmo_fast.kernels._common import dot, dot_mode, sigmoid


@triton.jit
def _highway_fwd_kernel(
    x_ptr, wc_ptr, bc_ptr, wt_ptr, bt_ptr, y_ptr,
    M, D,
    stride_xm, stride_xk, stride_wk, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, DOT: tl.constexpr,
):
    # grouped tile order: neighbouring programs share x rows and weight columns in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(D, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < D
    rows = offs_m.to(tl.int64) * stride_xm
    acc_c = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < D
        a = tl.load(x_ptr + rows[:, None] + offs_k[None, :] * stride_xk,
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w_off = offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
        w_mask = k_mask[:, None] & n_mask[None, :]
        wc = tl.load(wc_ptr + w_off, mask=w_mask, other=0.0)
        wt = tl.load(wt_ptr + w_off, mask=w_mask, other=0.0)
        acc_c += dot(a, wc, DOT)
        acc_t += dot(a, wt, DOT)

    out_mask = m_mask[:, None] & n_mask[None, :]
    bc = tl.load(bc_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    bt = tl.load(bt_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] + offs_n[None, :] * stride_xk, mask=out_mask, other=0.0).to(tl.float32)
    gate = sigmoid(acc_c + bc[None, :])
    transform = tl.maximum(acc_t + bt[None, :], 0.0)
    y = gate * transform + (1.0 - gate) * x
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :],
             y.to(y_ptr.dtype.element_ty), mask=out_mask)


def _block_config(device: torch.device, dtype: torch.dtype) -> Dict[str, int]:
    if device.type != "cuda":  # interpreter: few, large steps
        return dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, GROUP_M=4, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    # two 128x64 fp32 accumulators = one 128x128 GEMM tile's worth of registers
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)


def _launch_config(device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
    """The constexpr meta-parameters and launch options `highway_layer_fwd` passes to the kernel."""
    return dict(_block_config(device, dtype), DOT=dot_mode(device, dtype))


def highway_layer_fwd(x: torch.Tensor, w_carry: torch.Tensor, b_carry: torch.Tensor,
                      w_transform: torch.Tensor, b_transform: torch.Tensor) -> torch.Tensor:
    """One highway layer: x [M, D] -> g * relu(x Wt + bt) + (1 - g) * x, g = sigmoid(x Wc + bc)."""
    M, D = x.shape
    meta = _launch_config(x.device, x.dtype)
    y = torch.empty(M, D, device=x.device, dtype=x.dtype)
    if M == 0:
        return y
    # the kernel indexes both weights with one set of strides
    if w_carry.stride() != w_transform.stride():
        w_carry, w_transform = w_carry.contiguous(), w_transform.contiguous()
    grid = (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(D, meta["BLOCK_N"]),)
    _highway_fwd_kernel[grid](
        x, w_carry, b_carry.contiguous(), w_transform, b_transform.contiguous(), y,
        M, D,
        x.stride(0), x.stride(1), w_carry.stride(0), w_carry.stride(1), y.stride(0),
        **meta,
    )
    return y


def highway_fwd(x: torch.Tensor, layers: Sequence[Tuple[torch.Tensor, ...]], w_proj: torch.Tensor,
                b_proj: torch.Tensor) -> torch.Tensor:
    """Highway stack then projection (same semantics as `highway_ref`).

    x: [N, D] (any strides); layers: (w_carry [D, D], b_carry [D], w_transform [D, D],
    b_transform [D]) in TF layout; w_proj [D, P], b_proj [P] -> [N, P] in x's dtype.
    """
    for w_carry, b_carry, w_transform, b_transform in layers:
        x = highway_layer_fwd(x, w_carry, b_carry, w_transform, b_transform)
    return torch.addmm(b_proj, x, w_proj)


SUPPORT = Support(devices=frozenset({"cuda"}), interpreter=True, dtype_of="x", rule=highway_sizes)
not_supported_reasons = SUPPORT.not_supported_reasons  # (inputs, forced) -> reasons, for callers and tests
