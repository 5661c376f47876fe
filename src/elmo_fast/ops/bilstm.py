"""bilstm_layer op: one biLSTM layer (input projections + both directions + residual).

Backends: 'cuda' runs both directions of each time chunk in one persistent-kernel launch; 'torch'
is the reference schedule with each direction's recurrence sent to the `lstm_layer` op (so it runs
on the Triton or CUDA kernel, or the reference, by the same backend choice). Where that choice is the
reference, the schedule runs it directly on the layer input (`lstm_layer_inputs_ref`: no [B, T, 4C]
projections in between), with the same outputs.
"""
import torch

from .._support import REFERENCE
from ..reference.bilstm import bilstm_layer_ref, each_direction
from ._dispatch import Backend, BackendUnavailable, Op, record_choice, register
from .lstm import _op as _lstm_op
from .lstm import lstm_layer


def _example(shapes, device, dtype):
    B, T, C, P = 4, 8, shapes["C"], shapes["P"]
    f = dict(device=device, dtype=dtype)
    w = (torch.zeros(4 * C, P, **f), torch.zeros(4 * C, **f), torch.zeros(4 * C, P, **f),
         torch.zeros(P, C, **f))
    x = torch.zeros(B, T, P, **f)
    return dict(x=(x, x), weights=(w, w), lengths=torch.full((B,), T, dtype=torch.long, device=device),
                h0=torch.zeros(B, 2 * P, **f), c0=torch.zeros(B, 2 * C, **f), cell_clip=3.0, proj_clip=3.0,
                residual=False)


def _recurrence_is_reference(inputs) -> bool:
    """Whether the lstm_layer op would run its torch reference on this layer's problems. Asked with a
    stand-in for the [B, T, 4C] projections (a zero-strided view: no memory), since the point of the
    answer is not to compute them: the reference recurrence projects its inputs itself."""
    x, (w_ih, _, w_hh, w_p) = inputs["x"][0], inputs["weights"][0]
    P, C = w_hh.shape[1], w_p.shape[1]
    probe = dict(xproj=x.new_zeros(()).expand(x.shape[0], x.shape[1], w_ih.shape[0]), w_hh=w_hh, w_p=w_p,
                 lengths=inputs["lengths"], h0=inputs["h0"][:, :P], c0=inputs["c0"][:, :C],
                 cell_clip=inputs.get("cell_clip"), proj_clip=inputs.get("proj_clip"), reverse=False)
    try:
        chosen = _lstm_op.select(**probe)
    except BackendUnavailable:                # the call below raises it, with the real inputs
        return False
    return chosen.name == "torch"


def _bilstm_composite(**inputs):
    if _recurrence_is_reference(inputs):
        record_choice("lstm_layer", "torch")
        return bilstm_layer_ref(**inputs)
    return bilstm_layer_ref(**inputs, recurrence=each_direction(lstm_layer))


_op = register(
    Op(
        "bilstm_layer",
        [
            Backend("cuda", "elmo_fast.lstm_cuda:bilstm_layer_cuda", "elmo_fast.lstm_cuda:BILSTM_SUPPORT"),
            Backend("torch", "elmo_fast.ops.bilstm:_bilstm_composite", REFERENCE, composite=True),
        ],
        example=_example,
    )
)


def bilstm_layer(x, weights, lengths, h0, c0, cell_clip=None, proj_clip=None, residual=False, time_chunk=None,
                 *, backend=None):
    """Both directions of one biLSTM layer, input projections in time chunks (memory bounded).

    x (x_fwd, x_bwd) [B, T, D] each, weights per direction (w_ih [4C, D], bias [4C], w_hh [4C, P],
    w_p [P, C]), lengths [B], h0 [B, 2P], c0 [B, 2C] (forward half first)
    -> ((out_fwd, out_bwd) [B, T, P], h_T [B, 2P], c_T [B, 2C]). See `bilstm_layer_ref`.
    backend: None (the current choice) or 'auto' | 'cuda' | 'triton' | 'torch' for this call.
    """
    return _op(backend, x=tuple(x), weights=tuple(tuple(w) for w in weights), lengths=lengths, h0=h0, c0=c0,
               cell_clip=cell_clip, proj_clip=proj_clip, residual=residual, time_chunk=time_chunk)
