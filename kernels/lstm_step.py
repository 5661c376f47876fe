"""Projected-LSTM layer as two Triton kernels per timestep (a Python loop over T).

_lstm_gates_kernel  gates = xproj[:, pos] + h @ w_hh^T for a [BLOCK_B x BLOCK_C] tile of cells (the
                    four gate GEMMs side by side), fused epilogue: c = clip(sig(f) c + sig(i) tanh(g)),
                    m = sig(o) tanh(c); c updated in place for active rows only
_lstm_proj_kernel   h = clip(m @ w_p^T), written to the state and to out[b, pos] for active rows;
                    rows past their length write out[b, s] = 0 and keep their state
lstm_layer_fwd      the launcher with the op's signature (see lstm_layer_ref)

Precision: fp32 inputs run fp32 dots (input_precision="ieee", not tf32). bf16 inputs run bf16 x bf16
dots with fp32 accumulation; the state h, c stays fp32 (h is rounded to bf16 only as a dot operand).
Under TRITON_INTERPRET the bf16 dot runs as an fp32 dot of the bf16-rounded operands (same result;
the interpreter's own bf16 dot is wrong in triton 3.9).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from elmo_fast._support import Support, lstm_sizes
from elmo_fast.kernels._common import dot, dot_mode, sigmoid, tanh


@triton.jit
def _step_rows(len_ptr, s, B, T, REVERSE: tl.constexpr, BLOCK_B: tl.constexpr):
    """The batch rows of this program at step s: rows rb, in range (bmask), lengths clamped to [0, T] (L),
    still running (active), and the time position each reads and writes (pos)."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    bmask = rb < B
    L = tl.load(len_ptr + rb, mask=bmask, other=0)
    L = tl.minimum(tl.maximum(L, 0), T)
    active = bmask & (s < L)
    if REVERSE:
        pos = L - 1 - s
    else:
        pos = L * 0 + s
    return rb, bmask, L, active, pos


@triton.jit
def _row_offsets(rb, pos, stride_b, stride_t):
    """Element offsets rb * stride_b + pos * stride_t in int64: for [B, T, 4C] inputs B*T*4C can
    pass 2**31 (original model, B = 1024, T >= 128), where int32 offsets wrap."""
    return rb.to(tl.int64) * stride_b + pos.to(tl.int64) * stride_t


@triton.jit(do_not_specialize=["s"])  # one compile for every step index
def _lstm_gates_kernel(
    xproj_ptr, whh_ptr, h_ptr, c_ptr, m_ptr, len_ptr,
    s, B, T, C, P,
    stride_xb, stride_xt,
    cell_clip,
    HAS_CELL_CLIP: tl.constexpr, REVERSE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, bmask, L, active, pos = _step_rows(len_ptr, s, B, T, REVERSE, BLOCK_B)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = rc < C

    acc_i = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    acc_o = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, P, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < P
        h = tl.load(h_ptr + rb[:, None] * P + rk[None, :], mask=bmask[:, None] & kmask[None, :], other=0.0)
        wmask = kmask[:, None] & cmask[None, :]
        # w_hh is [4C, P]: the tile [BLOCK_K, BLOCK_C] of gate q is w_hh[q*C + rc, rk]^T
        w_base = whh_ptr + rc[None, :] * P + rk[:, None]
        w_i = tl.load(w_base + 0 * C * P, mask=wmask, other=0.0)
        w_f = tl.load(w_base + 1 * C * P, mask=wmask, other=0.0)
        w_g = tl.load(w_base + 2 * C * P, mask=wmask, other=0.0)
        w_o = tl.load(w_base + 3 * C * P, mask=wmask, other=0.0)
        # bf16 weights: h is rounded to bf16 as the dot operand (the state itself stays fp32)
        acc_i += dot(h, w_i, DOT)
        acc_f += dot(h, w_f, DOT)
        acc_g += dot(h, w_g, DOT)
        acc_o += dot(h, w_o, DOT)

    amask = active[:, None] & cmask[None, :]
    x_base = xproj_ptr + _row_offsets(rb, pos, stride_xb, stride_xt)[:, None] + rc[None, :]
    x_i = tl.load(x_base + 0 * C, mask=amask, other=0.0).to(tl.float32)
    x_f = tl.load(x_base + 1 * C, mask=amask, other=0.0).to(tl.float32)
    x_g = tl.load(x_base + 2 * C, mask=amask, other=0.0).to(tl.float32)
    x_o = tl.load(x_base + 3 * C, mask=amask, other=0.0).to(tl.float32)
    c_ptrs = c_ptr + rb[:, None] * C + rc[None, :]
    c_old = tl.load(c_ptrs, mask=amask, other=0.0)
    c_new = sigmoid(acc_f + x_f) * c_old + sigmoid(acc_i + x_i) * tanh(acc_g + x_g)
    if HAS_CELL_CLIP:
        c_new = tl.minimum(tl.maximum(c_new, -cell_clip), cell_clip)
    tl.store(c_ptrs, c_new, mask=amask)
    m = sigmoid(acc_o + x_o) * tanh(c_new)
    tl.store(m_ptr + rb[:, None] * C + rc[None, :], m, mask=amask)


@triton.jit(do_not_specialize=["s"])
def _lstm_proj_kernel(
    m_ptr, wp_ptr, h_ptr, out_ptr, len_ptr,
    s, B, T, C, P,
    proj_clip,
    HAS_PROJ_CLIP: tl.constexpr, REVERSE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rb, bmask, L, active, pos = _step_rows(len_ptr, s, B, T, REVERSE, BLOCK_B)
    rp = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = rp < P

    acc = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < C
        # m is only defined for active rows (masked to 0 elsewhere)
        m = tl.load(m_ptr + rb[:, None] * C + rk[None, :], mask=active[:, None] & kmask[None, :], other=0.0)
        # w_p is [P, C]: the tile [BLOCK_K, BLOCK_P] is w_p[rp, rk]^T
        w = tl.load(wp_ptr + rp[None, :] * C + rk[:, None], mask=kmask[:, None] & pmask[None, :], other=0.0)
        acc += dot(m, w, DOT)
    if HAS_PROJ_CLIP:
        acc = tl.minimum(tl.maximum(acc, -proj_clip), proj_clip)

    amask = active[:, None] & pmask[None, :]
    tl.store(h_ptr + rb[:, None] * P + rp[None, :], acc, mask=amask)
    out_row = out_ptr + rb.to(tl.int64)[:, None] * (T * P) + rp[None, :]  # int64: B*T*P may pass 2**31
    tl.store(out_row + pos[:, None] * P, acc.to(out_ptr.dtype.element_ty), mask=amask)
    pad = (bmask & (s >= L))[:, None] & pmask[None, :]
    tl.store(out_row + s * P, tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32).to(out_ptr.dtype.element_ty),
             mask=pad)


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def _launch_config(device: torch.device, dtype: torch.dtype, B: int, C: int, P: int,
                   cell_clip: Optional[float], proj_clip: Optional[float],
                   reverse: bool) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The constexpr meta-parameters `lstm_layer_fwd` passes to the gates and projection kernels."""
    mode = dot_mode(device, dtype)
    block_b = _pow2(B, 16, 64)
    block_c, block_k = _pow2(C, 16, 64), _pow2(P, 16, 64)
    gates = dict(HAS_CELL_CLIP=cell_clip is not None, REVERSE=bool(reverse), DOT=mode,
                 BLOCK_B=block_b, BLOCK_C=block_c, BLOCK_K=block_k,
                 # four [64, 64] fp32 accumulators: with 4 warps ptxas spills ~37 KB per thread (fp32)
                 # for sm_90 (tests/test_triton_compile.py); 8 warps hold them in registers
                 num_warps=8 if block_b * block_c >= 64 * 64 else 4)
    proj = dict(HAS_PROJ_CLIP=proj_clip is not None, REVERSE=bool(reverse), DOT=mode,
                BLOCK_B=block_b, BLOCK_P=_pow2(P, 16, 64), BLOCK_K=_pow2(C, 16, 64))
    return gates, proj


def lstm_layer_fwd(
    xproj: torch.Tensor, w_hh: torch.Tensor, w_p: torch.Tensor, lengths: torch.Tensor,
    h0: torch.Tensor, c0: torch.Tensor,
    cell_clip: Optional[float] = None, proj_clip: Optional[float] = None, reverse: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one projected-LSTM layer; two Triton launches per timestep.

    xproj [B, T, 4C] (fp32 or bf16), w_hh [4C, P], w_p [P, C] (xproj's dtype), lengths [B] int,
    h0 [B, P], c0 [B, C] -> out [B, T, P] (xproj's dtype), h_T [B, P], c_T [B, C] (dtypes of h0, c0).
    Semantics of `lstm_layer_ref`.
    """
    B, T, G = xproj.shape
    C, P = G // 4, w_hh.shape[1]
    dev = xproj.device
    xproj = xproj if xproj.stride(2) == 1 else xproj.contiguous()
    w_hh, w_p = w_hh.contiguous(), w_p.contiguous()
    lens = lengths.to(device=dev, dtype=torch.int32).contiguous()
    h = h0.to(torch.float32, copy=True).contiguous()
    c = c0.to(torch.float32, copy=True).contiguous()
    out = torch.empty(B, T, P, dtype=xproj.dtype, device=dev)
    lmax = int(lens.clamp(0, T).max().item()) if B and T else 0
    if lmax < T:
        out[:, lmax:].zero_()
    if lmax:
        m = torch.empty(B, C, dtype=torch.float32, device=dev)
        gates_meta, proj_meta = _launch_config(dev, xproj.dtype, B, C, P, cell_clip, proj_clip, reverse)
        grid_g = (triton.cdiv(B, gates_meta["BLOCK_B"]), triton.cdiv(C, gates_meta["BLOCK_C"]))
        grid_p = (triton.cdiv(B, proj_meta["BLOCK_B"]), triton.cdiv(P, proj_meta["BLOCK_P"]))
        cc = 0.0 if cell_clip is None else float(cell_clip)
        pc = 0.0 if proj_clip is None else float(proj_clip)
        for s in range(lmax):
            _lstm_gates_kernel[grid_g](
                xproj, w_hh, h, c, m, lens, s, B, T, C, P, xproj.stride(0), xproj.stride(1), cc, **gates_meta,
            )
            _lstm_proj_kernel[grid_p](m, w_p, h, out, lens, s, B, T, C, P, pc, **proj_meta)
    return out, h.to(h0.dtype), c.to(c0.dtype)


SUPPORT = Support(devices=frozenset({"cuda"}), interpreter=True, dtype_of="xproj", rule=lstm_sizes)
not_supported_reasons = SUPPORT.not_supported_reasons  # (inputs, forced) -> reasons, for callers and tests
