"""scalar_mix op: a handful of elementwise ops, left to PyTorch on every device."""
import torch

from .._support import REFERENCE
from ._dispatch import Backend, Op, register


def _example(shapes, device, dtype):
    B, T, D = 4, 8, 2 * shapes["P"]
    return dict(layers=[torch.zeros(B, T, D, device=device, dtype=dtype) for _ in range(3)],
                scalars=torch.zeros(3, device=device, dtype=dtype),
                gamma=torch.ones(1, device=device, dtype=dtype),
                mask=torch.ones(B, T, dtype=torch.long, device=device), do_layer_norm=False)


_op = register(Op("scalar_mix",
                  [Backend("torch", "elmo_fast.reference.scalar_mix:scalar_mix_ref", REFERENCE)],
                  example=_example))


def scalar_mix(layers, scalars, gamma, mask=None, do_layer_norm=False, *, backend=None):
    """K layers [B, T, D], scalars [K], gamma [1], mask [B, T] -> [B, T, D]. See `scalar_mix_ref`."""
    return _op(backend, layers=list(layers), scalars=scalars, gamma=gamma, mask=mask,
               do_layer_norm=do_layer_norm)
