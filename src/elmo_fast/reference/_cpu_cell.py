"""One LSTM step's element-wise cell update: the torch reference and the launcher of our fused CPU
kernel (csrc/cpu/lstm_cell.cpp, elmo_fast._cpu_kernels).

    gates [n, 4C] (pre-activations i, f, g, o; overwritten), c [n, C] (updated in place):
    c = clip(sigmoid(f) * c + sigmoid(i) * tanh(g), cell_clip);  out [n, C] = sigmoid(o) * tanh(c)

The kernel makes one pass where the torch ops make eight (bench/NOTES.md, issue 12, third session);
its exp is a polynomial (a few float ulps; tanh within ~1e-7 absolute near 0), so it agrees with
the reference to fp32 rounding, not bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .._support import one_thread
from ._cpu_gemm import cpu_kernels, float32_rows


def cell_update_ref(gates: torch.Tensor, c: torch.Tensor, out: torch.Tensor,
                    cell_clip: Optional[float]) -> torch.Tensor:
    """The update in torch ops, on one thread for CPU tensors (see `one_thread`). Returns out."""
    C = c.shape[1]
    with one_thread(gates.device):
        gates[:, : 2 * C].sigmoid_()      # i, f
        gates[:, 2 * C : 3 * C].tanh_()   # g
        gates[:, 3 * C :].sigmoid_()      # o
        c.mul_(gates[:, C : 2 * C]).addcmul_(gates[:, :C], gates[:, 2 * C : 3 * C])
        if cell_clip is not None:
            c.clamp_(-cell_clip, cell_clip)
        torch.tanh(c, out=out)
        return out.mul_(gates[:, 3 * C :])


def cell_update_fn(device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """f(gates, c, out, cell_clip) -> out for tensors of this device and dtype: our kernel for CPU
    float32 on one thread where it runs here (the directions run one thread each), else the
    reference. out must not overlap gates or c."""
    mod = cpu_kernels()
    if mod is None or device.type != "cpu" or dtype != torch.float32 or torch.get_num_threads() != 1:
        return cell_update_ref

    def run(gates, c, out, cell_clip):
        n, C = c.shape
        if not (float32_rows(gates, 4 * C) and float32_rows(c, C) and float32_rows(out, C)
                and gates.shape[0] == n and out.shape[0] == n):
            raise ValueError(f"cell_update: gates {tuple(gates.shape)} strides {gates.stride()}, c "
                             f"{tuple(c.shape)} strides {c.stride()}, out {tuple(out.shape)} strides "
                             f"{out.stride()} (float32 CPU rows with contiguous elements expected)")
        mod.cell_update(gates.data_ptr(), max(4 * C, gates.stride(0)), c.data_ptr(), max(C, c.stride(0)),
                        out.data_ptr(), max(C, out.stride(0)), n, C,
                        math.nan if cell_clip is None else float(cell_clip))
        return out
    return run
