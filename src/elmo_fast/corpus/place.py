"""One batch's output to its place in a window buffer, in the stored dtype: the launcher of our C++
kernel (csrc/cpu/place_rows.cpp, elmo_fast._cpu_kernels) and its torch / numpy reference.

    src [B, L_s, T, D] float32 (the model's output for a batch, any strides with D contiguous),
    lengths, rows [B] int64 (sentence r of the batch: lengths[r] tokens, to rows rows[r].. of buf),
    buf [L_s, R, D] (the window buffer: float32, float16 or bfloat16, contiguous):
    buf[l, rows[r] + t] = src[r, l, t] for t < lengths[r], converted as `layouts.to_storage` does.

The kernel converts and places in one pass without the GIL; the reference converts the batch in one
torch op into a staging tensor kept from batch to batch (`convert_into`), then numpy copies each
sentence's rows (bench/NOTES.md, issue 8, seventh session). Both give `to_storage`'s bits (float16
and bfloat16 rounded to nearest even), except that a NaN may come out as another NaN.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..reference._cpu_gemm import kernels_or_reference

STORAGE_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_NAME = {v: k for k, v in STORAGE_TORCH.items()}


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy without a copy (bfloat16 / its int16 bits -> uint16)."""
    if t.dtype in (torch.bfloat16, torch.int16):
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def convert_into(x: torch.Tensor, dtype_out: str, staging: Optional[torch.Tensor]) -> torch.Tensor:
    """x (float32) in the stored dtype, written into the memory of `staging` (the tensor this returned
    last time, or None) when that is large enough, else into a new tensor: one conversion op, with
    no allocation from batch to batch. Returns the stored tensor, shaped like x (bfloat16 as a
    bfloat16 tensor: the rounding of `to_storage`, to nearest even)."""
    n = x.numel()
    base = None if staging is None else (staging._base if staging._base is not None else staging)
    if base is None or base.numel() < n:
        base = torch.empty(n, dtype=STORAGE_TORCH[dtype_out])
    out = base.view(-1)[:n].view(x.shape)
    out.copy_(x)
    return out


def place_batch_ref(buf: torch.Tensor, src: torch.Tensor, lengths: np.ndarray, rows: np.ndarray,
                    staging: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The reference: returns the staging tensor to pass next time."""
    staged = convert_into(src, _NAME[buf.dtype], staging)
    s, d = as_numpy(staged), as_numpy(buf)
    for r, (a, n) in enumerate(zip(rows.tolist(), lengths.tolist())):
        d[:, a:a + n] = s[r, :, :n]
    return staged


def place_batch(buf: torch.Tensor, src: torch.Tensor, lengths: np.ndarray, rows: np.ndarray,
                staging: Optional[torch.Tensor] = None,
                native: Optional[bool] = None) -> Optional[torch.Tensor]:
    """Places the batch (see the module doc) by the kernel where it runs here, else by the reference;
    native=True requires the kernel, False takes the reference. Returns the staging tensor to pass
    next time (the kernel needs none: None)."""
    mod = kernels_or_reference(native)
    if mod is None:
        return place_batch_ref(buf, src, lengths, rows, staging)
    B, L, T, D = src.shape
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if not (src.dtype == torch.float32 and src.device.type == "cpu" and (D <= 1 or src.stride(3) == 1)
            and buf.dim() == 3 and buf.shape[0] == L and buf.shape[2] == D and buf.is_contiguous()
            and buf.dtype in _KIND and buf.device.type == "cpu"
            and lengths.shape == (B,) and rows.shape == (B,)):
        raise ValueError(f"place_batch: src {tuple(src.shape)} {src.dtype} strides {src.stride()}, buf "
                         f"{tuple(buf.shape)} {buf.dtype}, lengths {lengths.shape}, rows {rows.shape}: "
                         "expected float32 [B, L, T, D] with D contiguous, a contiguous [L, R, D] buffer, "
                         "[B] lengths and rows")
    mod.place_rows(src.data_ptr(), src.stride(0), src.stride(1), src.stride(2), lengths.ctypes.data,
                   rows.ctypes.data, B, L, T, D, buf.data_ptr(), buf.shape[1], _KIND[buf.dtype])
    return None
