"""highway op: highway layers + projection (Triton gate epilogue or cuBLAS on CUDA, torch elsewhere)."""
from ._dispatch import Backend, Op, register

_op = register(
    Op(
        "highway",
        [
            Backend("triton", "elmo_fast.kernels.highway:highway_fwd",
                    "elmo_fast.kernels.highway:not_supported_reasons"),
            Backend("torch", "elmo_fast.reference.highway:highway_ref"),
        ],
    )
)


def highway(x, layers, w_proj, b_proj):
    """x [N, D], layers [(w_carry [D, D], b_carry [D], w_transform [D, D], b_transform [D])],
    w_proj [D, P], b_proj [P] -> [N, P]. See `highway_ref`."""
    return _op(x=x, layers=[tuple(layer) for layer in layers], w_proj=w_proj, b_proj=b_proj)
