"""char_cnn op: Triton fused conv + max-pool on CUDA, the PyTorch reference elsewhere."""
from ._dispatch import Backend, Op, register

_op = register(
    Op(
        "char_cnn",
        [
            Backend("triton", "elmo_fast.kernels.char_cnn:char_cnn_fwd",
                    "elmo_fast.kernels.char_cnn:not_supported_reasons"),
            Backend("torch", "elmo_fast.reference.char_cnn:char_cnn_ref"),
        ],
    )
)


def char_cnn(chars, char_embed, conv_weights, conv_biases, activation="relu"):
    """Token vectors from character ids.

    chars [N, L] int, char_embed [V, E], conv_weights list of [w_k, E, n_k], conv_biases list of
    [n_k] -> [N, sum n_k] = activation(max over windows of conv + bias). See `char_cnn_ref`.
    """
    return _op(chars=chars, char_embed=char_embed, conv_weights=list(conv_weights),
               conv_biases=list(conv_biases), activation=activation)
