"""Public ops. Each picks a backend (cuda / triton / torch) per call and can say why.

    char_cnn(chars, char_embed, conv_weights, conv_biases, activation)  -> [N, F]
    highway(x, layers, w_proj, b_proj)                                 -> [N, P]
    lstm_layer(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse)
                                                                       -> (out, h_T, c_T)
    bilstm_layer(x, weights, lengths, h0, c0, cell_clip, proj_clip, residual, time_chunk)
                                                                       -> ((out_f, out_b), h_T, c_T)
    scalar_mix(layers, scalars, gamma, mask, do_layer_norm)            -> [B, T, D]

Shapes and semantics are those of the reference functions in `elmo_fast.reference`. Every op takes
`backend=` for one call; `use_backend(name)` chooses for a block (see `_dispatch`).
"""
from ._dispatch import OPS, BackendUnavailable, current_backend, record_backends, use_backend
from .bilstm import bilstm_layer
from .char_cnn import char_cnn
from .highway import highway
from .lstm import lstm_layer
from .scalar_mix import scalar_mix

__all__ = ["OPS", "BackendUnavailable", "bilstm_layer", "char_cnn", "current_backend", "highway",
           "lstm_layer", "record_backends", "scalar_mix", "use_backend"]
