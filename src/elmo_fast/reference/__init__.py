"""Pure-PyTorch ops: the CPU path and the oracle every kernel is tested against.

Each function has the same signature as the public op in `elmo_fast.ops` of the same name
(without the `_ref` suffix) and computes in the dtype of its inputs.
"""
from .bilstm import bilstm_layer_ref
from .char_cnn import char_cnn_ref
from .highway import highway_ref
from .lstm import lstm_layer_ref
from .scalar_mix import scalar_mix_ref

__all__ = ["bilstm_layer_ref", "char_cnn_ref", "highway_ref", "lstm_layer_ref", "scalar_mix_ref"]
