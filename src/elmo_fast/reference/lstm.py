"""One direction of one projected-LSTM layer (ELMo's LstmCellWithProjection), over all timesteps."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def reverse_index(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T] index that reverses each row's first lengths[b] positions and leaves padding in place.
    It is its own inverse, so the same gather puts outputs back."""
    t = torch.arange(T, device=lengths.device).expand(lengths.numel(), T)
    L = lengths.view(-1, 1).to(t.dtype)
    return torch.where(t < L, L - 1 - t, t)


def lstm_layer_ref(
    xproj: torch.Tensor,
    w_hh: torch.Tensor,
    w_p: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    cell_clip: Optional[float] = None,
    proj_clip: Optional[float] = None,
    reverse: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the recurrence given the input projections of every timestep.

    xproj:   [B, T, 4C]  x_t @ W_ih^T + b for every t, gate order i, f, g, o (forget bias included)
    w_hh:    [4C, P]     recurrent weights (PyTorch layout: gates = h @ w_hh^T)
    w_p:     [P, C]      projection (h = (o * tanh(c)) @ w_p^T)
    lengths: [B] int     real tokens per row; positions t >= lengths[b] are padding
    h0, c0:  [B, P], [B, C]  initial state
    reverse: walk each row from its own last token back to position 0
    returns  out [B, T, P] (zeros at padding), h_T [B, P], c_T [B, C]: the state after each row's
             last real step (h0, c0 for rows of length 0)

    Each step: c = clip(f*c + i*g, cell_clip); h = clip(w_p (o * tanh c), proj_clip).
    """
    B, T, G = xproj.shape
    C = G // 4
    if reverse:
        idx = reverse_index(lengths, T)
        xproj = torch.gather(xproj, 1, idx.unsqueeze(-1).expand(B, T, G))
    active = torch.arange(T, device=xproj.device).view(1, T) < lengths.view(B, 1).to(xproj.device)
    h, c = h0, c0
    w_hh_t, w_p_t = w_hh.t(), w_p.t()
    out = xproj.new_zeros(B, T, w_p.shape[0])
    for t in range(T):
        gates = torch.addmm(xproj[:, t], h, w_hh_t)
        i, f, g, o = gates.split(C, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if cell_clip is not None:
            c_new = c_new.clamp(-cell_clip, cell_clip)
        h_new = (torch.sigmoid(o) * torch.tanh(c_new)) @ w_p_t
        if proj_clip is not None:
            h_new = h_new.clamp(-proj_clip, proj_clip)
        a = active[:, t : t + 1]
        # padded steps neither output nor advance the state
        h = torch.where(a, h_new, h)
        c = torch.where(a, c_new, c)
        out[:, t] = torch.where(a, h_new, 0.0)
    if reverse:
        out = torch.gather(out, 1, idx.unsqueeze(-1).expand_as(out))
    return out, h, c
