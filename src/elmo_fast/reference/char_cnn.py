"""Character CNN reference: embedding, one convolution per width, max over positions, activation."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .._support import ACTIVATIONS


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(x)
    if activation == "tanh":
        return torch.tanh(x)
    raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, not {activation!r}")


def char_cnn_ref(
    chars: torch.Tensor,
    char_embed: torch.Tensor,
    conv_weights: Sequence[torch.Tensor],
    conv_biases: Sequence[torch.Tensor],
    activation: str = "relu",
) -> torch.Tensor:
    """Token vectors from character ids.

    chars:        [N, L] int       character ids (0 = masked, 1..261 = allennlp ids + 1)
    char_embed:   [V, E] float     row 0 is zeros (V = 262 for the standard models)
    conv_weights: list of [w_k, E, n_k]  one convolution per width, TF layout (file order)
    conv_biases:  list of [n_k]
    returns       [N, sum_k n_k]   activation(max over all L - w_k + 1 windows of conv + bias)
    """
    x = F.embedding(chars.long(), char_embed).transpose(1, 2)  # [N, E, L]
    pooled = []
    for w, b in zip(conv_weights, conv_biases):
        conv = F.conv1d(x, w.permute(2, 1, 0), b)  # weight [n, E, w] -> [N, n, L - w + 1]
        pooled.append(conv.amax(dim=-1))
    # activation after the max equals activation before it: both are monotonic.
    return activate(torch.cat(pooled, dim=-1), activation)
