"""lstm_layer op: persistent CUDA kernel, then the Triton step kernel, then the torch reference."""
from ._dispatch import Backend, Op, register

_op = register(
    Op(
        "lstm_layer",
        [
            Backend("cuda", "elmo_fast.lstm_cuda:lstm_layer_cuda",
                    "elmo_fast.lstm_cuda:not_supported_reasons"),
            Backend("triton", "elmo_fast.kernels.lstm_step:lstm_layer_triton",
                    "elmo_fast.kernels.lstm_step:not_supported_reasons"),
            Backend("torch", "elmo_fast.reference.lstm:lstm_layer_ref"),
        ],
    )
)


def lstm_layer(xproj, w_hh, w_p, lengths, h0, c0, cell_clip=None, proj_clip=None, reverse=False):
    """One direction of one projected-LSTM layer over all timesteps.

    xproj [B, T, 4C] (input projections incl. bias, gates i, f, g, o), w_hh [4C, P], w_p [P, C],
    lengths [B], h0 [B, P], c0 [B, C] -> (out [B, T, P], h_T [B, P], c_T [B, C]).
    See `lstm_layer_ref`.
    """
    return _op(xproj=xproj, w_hh=w_hh, w_p=w_p, lengths=lengths, h0=h0, c0=c0,
               cell_clip=cell_clip, proj_clip=proj_clip, reverse=reverse)
