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

from typing import Any, Dict, List, Sequence, Tuple

import torch
import triton
import triton.language as tl

from elmo_fast.ops._dispatch import device_reasons


@triton.jit
def _highway_fwd_kernel(
    x_ptr, wc_ptr, bc_ptr, wt_ptr, bt_ptr, y_ptr,
    M, D,
    stride_xm, stride_xk, stride_wk, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
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
        if UPCAST:  # the interpreter's tl.dot mishandles bf16 operands: multiply in fp32
            a32 = a.to(tl.float32)
            acc_c += tl.dot(a32, wc.to(tl.float32), input_precision="ieee")
            acc_t += tl.dot(a32, wt.to(tl.float32), input_precision="ieee")
        elif IEEE:
            acc_c += tl.dot(a, wc, input_precision="ieee")
            acc_t += tl.dot(a, wt, input_precision="ieee")
        else:
            acc_c += tl.dot(a, wc)
            acc_t += tl.dot(a, wt)

    out_mask = m_mask[:, None] & n_mask[None, :]
    bc = tl.load(bc_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    bt = tl.load(bt_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] + offs_n[None, :] * stride_xk, mask=out_mask, other=0.0).to(tl.float32)
    gate = tl.sigmoid(acc_c + bc[None, :])
    transform = tl.maximum(acc_t + bt[None, :], 0.0)
    y = gate * transform + (1.0 - gate) * x
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :],
             y.to(y_ptr.dtype.element_ty), mask=out_mask)


def _config(device: torch.device, dtype: torch.dtype) -> Dict[str, int]:
    if device.type != "cuda":  # interpreter: few, large steps
        return dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, GROUP_M=4, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    # two 128x64 fp32 accumulators = one 128x128 GEMM tile's worth of registers
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)


def _launch_config(device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
    """The constexpr meta-parameters and launch options `highway_layer_fwd` passes to the kernel."""
    return dict(_config(device, dtype), IEEE=dtype == torch.float32,
                UPCAST=device.type != "cuda" and dtype != torch.float32)


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


def not_supported_reasons(inputs: Dict[str, Any], forced: bool) -> List[str]:
    """Why the Triton highway cannot run this call (empty list: it can)."""
    why = device_reasons(inputs, forced, allow_interpreter=True)
    x = inputs.get("x")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        return why + ["x must be a 2-d tensor [N, D]"]
    if x.dtype not in (torch.float32, torch.bfloat16):
        why.append(f"x dtype {x.dtype} is not float32 or bfloat16")
    D = x.shape[1]
    for i, layer in enumerate(inputs.get("layers") or []):
        if len(layer) != 4:
            why.append(f"layers[{i}] has {len(layer)} tensors, not 4")
            continue
        wc, bc, wt, bt = layer
        if wc.shape != (D, D) or wt.shape != (D, D) or bc.shape != (D,) or bt.shape != (D,):
            why.append(f"layers[{i}] shapes do not match D={D}")
        if any(t.dtype != x.dtype for t in layer):
            why.append(f"layers[{i}] dtypes differ from x dtype {x.dtype}")
    w_proj, b_proj = inputs.get("w_proj"), inputs.get("b_proj")
    if isinstance(w_proj, torch.Tensor) and (w_proj.dim() != 2 or w_proj.shape[0] != D):
        why.append(f"w_proj shape {tuple(w_proj.shape)} is not [{D}, P]")
    if isinstance(w_proj, torch.Tensor) and w_proj.dtype != x.dtype:
        why.append(f"w_proj dtype {w_proj.dtype} != x dtype {x.dtype}")
    if (isinstance(b_proj, torch.Tensor) and isinstance(w_proj, torch.Tensor)
            and b_proj.shape != w_proj.shape[-1:]):
        why.append(f"b_proj shape {tuple(b_proj.shape)} != ({w_proj.shape[-1]},)")
    return why
