"""Highway layers (TF form) followed by the linear projection."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ._cpu_gemm import linear_fn


def highway_ref(
    x: torch.Tensor,
    layers: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    w_proj: torch.Tensor,
    b_proj: torch.Tensor,
) -> torch.Tensor:
    """Highway stack then projection.

    x:       [N, D]
    layers:  per layer (w_carry [D, D], b_carry [D], w_transform [D, D], b_transform [D]),
             TF layout (y = x @ W + b). Each layer: g = sigmoid(x Wc + bc);
             x = g * relu(x Wt + bt) + (1 - g) * x
    w_proj:  [D, P], b_proj: [P]
    returns  [N, P]
    """
    for w_carry, b_carry, w_transform, b_transform in layers:
        gate = torch.sigmoid(linear_fn(w_carry, b_carry, in_out=True)(x))
        transform = torch.relu(linear_fn(w_transform, b_transform, in_out=True)(x))
        x = gate * transform + (1 - gate) * x
    return linear_fn(w_proj, b_proj, in_out=True)(x)
