"""LSTM test inputs shared by the kernel tests (test_lstm_step, test_lstm_cuda) and test_bilstm."""
from __future__ import annotations

import torch


def make_inputs(B, T, C, P, lengths, device="cpu", dtype=torch.float32):
    """[xproj [B, T, 4C], w_hh [4C, P], w_p [P, C], lengths [B] int64, h0 [B, P], c0 [B, C]]: fp32
    values rounded to `dtype` (so the fp64 oracle sees exactly what the kernel sees); the state is
    fp32. Weights scaled so the gates stay in their sensitive range."""
    def r(*shape, scale=1.0):
        return (torch.randn(*shape) * scale).to(dtype).to(torch.float32)
    xproj = r(B, T, 4 * C)
    w_hh = r(4 * C, P, scale=P ** -0.5)
    w_p = r(P, C, scale=2 * C ** -0.5)
    h0, c0 = r(B, P), r(B, C)
    lens = torch.as_tensor(lengths, dtype=torch.int64)
    return [t.to(device) for t in (xproj, w_hh, w_p, lens, h0, c0)]
