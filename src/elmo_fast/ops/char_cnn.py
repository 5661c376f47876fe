"""char_cnn op: Triton fused conv + max-pool on CUDA, the PyTorch reference elsewhere."""
import torch

from .._support import REFERENCE
from ._dispatch import Backend, Op, register


def _example(shapes, device, dtype):
    E, filters = shapes["E"], shapes["filters"]
    return dict(chars=torch.zeros(32, shapes["L"], dtype=torch.long, device=device),
                char_embed=torch.zeros(262, E, device=device, dtype=dtype),
                conv_weights=[torch.zeros(w, E, n, device=device, dtype=dtype) for w, n in filters],
                conv_biases=[torch.zeros(n, device=device, dtype=dtype) for _, n in filters],
                activation="relu")


_op = register(
    Op(
        "char_cnn",
        [
            Backend("triton", "elmo_fast.kernels.char_cnn:char_cnn_fwd",
                    "elmo_fast.kernels.char_cnn:SUPPORT"),
            Backend("torch", "elmo_fast.reference.char_cnn:char_cnn_ref", REFERENCE),
        ],
        example=_example,
    )
)


def char_cnn(chars, char_embed, conv_weights, conv_biases, activation="relu", *, backend=None):
    """Token vectors from character ids.

    chars [N, L] int, char_embed [V, E], conv_weights list of [w_k, E, n_k], conv_biases list of
    [n_k] -> [N, sum n_k] = activation(max over windows of conv + bias). See `char_cnn_ref`.
    backend: None (the current choice, see `use_backend`) or 'auto' | 'triton' | 'torch' for this call.
    """
    return _op(backend, chars=chars, char_embed=char_embed, conv_weights=list(conv_weights),
               conv_biases=list(conv_biases), activation=activation)
