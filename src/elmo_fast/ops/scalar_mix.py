"""scalar_mix op: a handful of elementwise ops, left to PyTorch on every device."""
from ._dispatch import Backend, Op, register

_op = register(Op("scalar_mix", [Backend("torch", "elmo_fast.reference.scalar_mix:scalar_mix_ref")]))


def scalar_mix(layers, scalars, gamma, mask=None, do_layer_norm=False):
    """K layers [B, T, D], scalars [K], gamma [1], mask [B, T] -> [B, T, D]. See `scalar_mix_ref`."""
    return _op(layers=list(layers), scalars=scalars, gamma=gamma, mask=mask, do_layer_norm=do_layer_norm)
