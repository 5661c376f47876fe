"""lstm_layer op: persistent CUDA kernel, then the Triton step kernel, then the torch reference."""
import torch

from .._support import REFERENCE
from ._dispatch import Backend, Op, register


def _example(shapes, device, dtype):
    B, T, C, P = 4, 8, shapes["C"], shapes["P"]
    f = dict(device=device, dtype=dtype)
    return dict(xproj=torch.zeros(B, T, 4 * C, **f), w_hh=torch.zeros(4 * C, P, **f),
                w_p=torch.zeros(P, C, **f), lengths=torch.full((B,), T, dtype=torch.long, device=device),
                h0=torch.zeros(B, P, **f), c0=torch.zeros(B, C, **f), cell_clip=3.0, proj_clip=3.0,
                reverse=False)


_op = register(
    Op(
        "lstm_layer",
        [
            Backend("cuda", "elmo_fast.lstm_cuda:lstm_layer_cuda", "elmo_fast.lstm_cuda:SUPPORT"),
            Backend("triton", "elmo_fast.kernels.lstm_step:lstm_layer_fwd",
                    "elmo_fast.kernels.lstm_step:SUPPORT"),
            Backend("torch", "elmo_fast.reference.lstm:lstm_layer_ref", REFERENCE),
        ],
        example=_example,
    )
)


def lstm_layer(xproj, w_hh, w_p, lengths, h0, c0, cell_clip=None, proj_clip=None, reverse=False, *,
               backend=None):
    """One direction of one projected-LSTM layer over all timesteps.

    xproj [B, T, 4C] (input projections incl. bias, gates i, f, g, o), w_hh [4C, P], w_p [P, C],
    lengths [B], h0 [B, P], c0 [B, C] -> (out [B, T, P], h_T [B, P], c_T [B, C]).
    See `lstm_layer_ref`. backend: None (the current choice) or 'auto' | 'cuda' | 'triton' | 'torch'.
    """
    return _op(backend, xproj=xproj, w_hh=w_hh, w_p=w_p, lengths=lengths, h0=h0, c0=c0,
               cell_clip=cell_clip, proj_clip=proj_clip, reverse=reverse)
