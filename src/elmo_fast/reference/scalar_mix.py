"""ScalarMix: gamma * sum_k softmax(s)_k * layer_k, optionally layer-normed (allennlp semantics)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def _masked_layer_norm(t: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    # allennlp 0.9 ScalarMix._do_layer_norm: statistics over all unmasked positions and features.
    mean = torch.sum(t * mask) / count
    variance = torch.sum(((t * mask) - mean * mask) ** 2) / count
    return (t - mean) / torch.sqrt(variance + 1e-12)


def scalar_mix_ref(
    layers: Sequence[torch.Tensor],
    scalars: torch.Tensor,
    gamma: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    do_layer_norm: bool = False,
) -> torch.Tensor:
    """Weighted sum of layers.

    layers:  K tensors [B, T, D]
    scalars: [K] unnormalised weights (softmax is taken here)
    gamma:   [] or [1] scale
    mask:    [B, T] (needed when do_layer_norm)
    returns  [B, T, D]
    """
    weights = torch.softmax(scalars.reshape(-1), dim=0)
    if not do_layer_norm:
        out = weights[0] * layers[0]
        for w, layer in zip(weights[1:], layers[1:]):
            out = out + w * layer
        return gamma.reshape(()) * out
    if mask is None:
        raise ValueError("do_layer_norm=True needs a mask")
    m = mask.to(layers[0].dtype).unsqueeze(-1)
    count = torch.sum(m) * layers[0].size(-1)
    out = None
    for w, layer in zip(weights, layers):
        term = w * _masked_layer_norm(layer, m, count)
        out = term if out is None else out + term
    return gamma.reshape(()) * out
