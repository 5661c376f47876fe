"""Triton helpers shared by the kernels: one form of sigmoid and tanh, one `tl.dot` precision rule.

DOT modes (a kernel's `DOT: tl.constexpr`, chosen on the host by `dot_mode`):
  DOT_NATIVE  the hardware dot in the operands' dtype (bf16 x bf16 -> fp32 accumulate on CUDA);
              the first operand is cast to the second's dtype (an fp32 state times bf16 weights)
  DOT_IEEE    fp32 x fp32 in full fp32 (input_precision="ieee", never tf32)
  DOT_UPCAST  the same products as DOT_NATIVE, computed exactly as an fp32 dot of the rounded
              operands: the Triton interpreter's own bf16 dot is wrong (triton 3.9), and a product
              of two bf16 values is exact in fp32
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

DOT_NATIVE, DOT_IEEE, DOT_UPCAST = 0, 1, 2


def dot_mode(device: torch.device, dtype: torch.dtype) -> int:
    """The DOT mode for operands of `dtype` on `device` (fp32 is always exact fp32)."""
    if dtype == torch.float32:
        return DOT_IEEE
    return DOT_NATIVE if device.type == "cuda" else DOT_UPCAST


@triton.jit
def dot(a, b, DOT: tl.constexpr):
    """a [M, K] @ b [K, N] -> fp32 [M, N], with the precision of mode DOT (see the module doc)."""
    if DOT == 2:
        r = tl.dot(a.to(b.dtype).to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif DOT == 1:
        r = tl.dot(a, b, input_precision="ieee")
    else:
        r = tl.dot(a.to(b.dtype), b)
    return r


@triton.jit
def sigmoid(x):
    """1 / (1 + e^-x) in fp32 (inf for very negative x gives 0, never NaN)."""
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    """tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}): no overflow for large |x|."""
    z = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - z) / (1.0 + z)
    return tl.where(x < 0, -t, t)
