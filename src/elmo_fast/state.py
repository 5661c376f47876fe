"""The LSTM state a stateful BiLm carries from one batch to the next (allennlp's _ElmoBiLm states).

Row b of each batch starts from the final state row b had in the previous batch. Rows seen for the
first time start from the start state (zeros, or the warmed-up state) and are kept from then on; a
smaller batch leaves the state of the rows beyond it untouched.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


class CarriedState:
    """h [L, R, 2P], c [L, R, 2C] for the R rows seen so far (None before the first batch).

    The tensors stay where they were made (a plain attribute, not a buffer), in the dtype of the
    first batch's state (fp32 for bf16/fp16 models, so the state is not rounded between batches).
    """

    def __init__(self) -> None:
        self.tensors: Optional[Tuple[Tensor, Tensor]] = None

    def reset(self, mask: Optional[Tensor] = None) -> None:
        """Forgets the state of every row, or of the rows where mask [R] is true."""
        if mask is None or self.tensors is None:
            self.tensors = None
            return
        h = self.tensors[0]
        if mask.numel() != h.size(1):
            raise ValueError(f"reset_states: mask has {mask.numel()} rows but the state has {h.size(1)}")
        keep = (~mask.bool()).view(1, -1, 1).to(h.device)
        self.tensors = tuple(s * keep for s in self.tensors)

    def take(self, B: int, h_start: Tensor, c_start: Tensor, device: torch.device, dtype: torch.dtype
             ) -> Tuple[Tensor, Tensor]:
        """The state of rows 0..B-1 on `device` in `dtype`: [L, B, 2P], [L, B, 2C]; rows not seen yet
        start from h_start [L, 1, 2P] / c_start [L, 1, 2C] (and are carried from now on)."""
        L = h_start.shape[0]
        if self.tensors is None:
            return h_start.expand(L, B, -1), c_start.expand(L, B, -1)
        h, c = self.tensors
        if B > h.size(1):
            n = B - h.size(1)
            h = torch.cat([h, h_start.to(h.device, h.dtype).expand(L, n, -1)], 1)
            c = torch.cat([c, c_start.to(c.device, c.dtype).expand(L, n, -1)], 1)
            self.tensors = (h, c)
        return h[:, :B].to(device, dtype), c[:, :B].to(device, dtype)

    def store(self, h: Tensor, c: Tensor) -> None:
        """Keeps the final state h [L, B, 2P], c [L, B, 2C] of a batch's B rows (detached)."""
        h, c = h.detach(), c.detach()
        if self.tensors is not None and self.tensors[0].size(1) > h.size(1):
            old_h, old_c = (s.to(h.device) for s in self.tensors)
            h = torch.cat([h.to(old_h.dtype), old_h[:, h.size(1):]], 1)
            c = torch.cat([c.to(old_c.dtype), old_c[:, c.size(1):]], 1)
        self.tensors = (h, c)
