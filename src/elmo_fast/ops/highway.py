"""highway op: highway layers + projection (Triton gate epilogue or cuBLAS on CUDA, torch elsewhere)."""
import torch

from .._support import REFERENCE
from ._dispatch import Backend, Op, register


def _example(shapes, device, dtype):
    F, P = shapes["F"], shapes["P"]
    f = dict(device=device, dtype=dtype)
    layers = [(torch.zeros(F, F, **f), torch.zeros(F, **f), torch.zeros(F, F, **f), torch.zeros(F, **f))
              for _ in range(shapes["n_highway"])]
    return dict(x=torch.zeros(32, F, **f), layers=layers, w_proj=torch.zeros(F, P, **f),
                b_proj=torch.zeros(P, **f))


_op = register(
    Op(
        "highway",
        [
            Backend("triton", "elmo_fast.kernels.highway:highway_fwd", "elmo_fast.kernels.highway:SUPPORT"),
            Backend("torch", "elmo_fast.reference.highway:highway_ref", REFERENCE),
        ],
        example=_example,
    )
)


def highway(x, layers, w_proj, b_proj, *, backend=None):
    """x [N, D], layers [(w_carry [D, D], b_carry [D], w_transform [D, D], b_transform [D])],
    w_proj [D, P], b_proj [P] -> [N, P]. See `highway_ref`. backend: as for `char_cnn`."""
    return _op(backend, x=x, layers=[tuple(layer) for layer in layers], w_proj=w_proj, b_proj=b_proj)
