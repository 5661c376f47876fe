"""One direction of one projected-LSTM layer (ELMo's LstmCellWithProjection), over all timesteps.

Two implementations of the same arithmetic:
  * `_lstm_packed` (used whenever no gradient is needed): rows are sorted by length and packed
    time-major, so step t computes only the rows still running (a prefix of the sorted rows, as
    allennlp's LstmCellWithProjection does); the backward direction is just a different packing
    index; every step works in preallocated buffers with in-place and out= ops (no allocation,
    no masking with `where`).
  * `_lstm_autograd`: the plain out-of-place loop, for training through the reference path.
Both give the same values (up to the order of floating-point rounding inside the GEMMs).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .._support import op_label
from . import _workspace
from ._cpu_cell import cell_update_fn
from ._cpu_gemm import few_rows_fn, linear_fn


# output of one input-projection GEMM call (see lstm_layer_inputs_ref)
PROJECTION_BLOCK_BYTES = 8 << 20


def reverse_index(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T] index that reverses each row's first lengths[b] positions and leaves padding in place.
    It is its own inverse, so the same gather puts outputs back."""
    t = torch.arange(T, device=lengths.device).expand(lengths.numel(), T)
    L = lengths.view(-1, 1).to(t.dtype)
    return torch.where(t < L, L - 1 - t, t)


def lstm_layer_ref(
    xproj: torch.Tensor,
    w_hh: torch.Tensor,
    w_p: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    cell_clip: Optional[float] = None,
    proj_clip: Optional[float] = None,
    reverse: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the recurrence given the input projections of every timestep.

    xproj:   [B, T, 4C]  x_t @ W_ih^T + b for every t, gate order i, f, g, o (forget bias included)
    w_hh:    [4C, P]     recurrent weights (PyTorch layout: gates = h @ w_hh^T)
    w_p:     [P, C]      projection (h = (o * tanh(c)) @ w_p^T)
    lengths: [B] int     real tokens per row; positions t >= lengths[b] are padding
    h0, c0:  [B, P], [B, C]  initial state
    reverse: walk each row from its own last token back to position 0
    returns  out [B, T, P] (zeros at padding, xproj's dtype), h_T [B, P], c_T [B, C]: the state after
             each row's last real step (h0, c0 for rows of length 0), in the dtypes of h0 and c0
             (so a bf16 model can carry an fp32 state between batches, as the kernels do)

    Each step: c = clip(f*c + i*g, cell_clip); h = clip(w_p (o * tanh c), proj_clip).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (xproj, w_hh, w_p, h0, c0))
    if needs_grad:
        return _lstm_autograd(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse)
    return _lstm_packed(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse)


def _lstm_autograd(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse):
    """Out-of-place loop over all rows at every step (differentiable)."""
    B, T, G = xproj.shape
    C = G // 4
    if reverse:
        idx = reverse_index(lengths, T)
        xproj = torch.gather(xproj, 1, idx.unsqueeze(-1).expand(B, T, G))
    active = torch.arange(T, device=xproj.device).view(1, T) < lengths.view(B, 1).to(xproj.device)
    h, c = h0, c0
    w_hh_t, w_p_t = w_hh.t(), w_p.t()
    steps: List[torch.Tensor] = []
    for t in range(T):
        gates = torch.addmm(xproj[:, t], h, w_hh_t)
        i, f, g, o = gates.split(C, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if cell_clip is not None:
            c_new = c_new.clamp(-cell_clip, cell_clip)
        h_new = (torch.sigmoid(o) * torch.tanh(c_new)) @ w_p_t
        if proj_clip is not None:
            h_new = h_new.clamp(-proj_clip, proj_clip)
        a = active[:, t : t + 1]
        # padded steps neither output nor advance the state
        h = torch.where(a, h_new, h)
        c = torch.where(a, c_new, c)
        steps.append(torch.where(a, h_new, torch.zeros((), dtype=h_new.dtype, device=h_new.device)))
    out = torch.stack(steps, 1) if steps else xproj.new_zeros(B, T, w_p.shape[0])
    if reverse:
        out = torch.gather(out, 1, idx.unsqueeze(-1).expand_as(out))
    return out, h.to(h0.dtype), c.to(c0.dtype)


def _packing(lens: torch.Tensor, T: int, reverse: bool, dev: torch.device):
    """Rows sorted by length (longest first, so the rows running at step t are a prefix) and packed
    time-major. lens [B] (CPU, clamped to [0, T]) -> (sorted_lens [B], order [B], counts per step,
    flat [N] the [B*T] row of each packed step, N = lens.sum()); reverse is a different `flat`."""
    B = lens.numel()
    sorted_lens, order = torch.sort(lens, descending=True, stable=True)
    running = sorted_lens.view(1, B) > torch.arange(T).view(T, 1)          # [T, B]
    counts = running.sum(1).tolist()
    t_idx, j_idx = running.nonzero(as_tuple=True)                           # t-major, j ascending
    pos = (sorted_lens[j_idx] - 1 - t_idx) if reverse else t_idx           # position within the row
    flat = (order[j_idx] * T + pos).to(dev)                                # packed -> [B*T] row
    return sorted_lens, order, counts, flat


def _lstm_packed(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse):
    """No-grad recurrence over length-sorted, time-major packed rows, in preallocated buffers."""
    B, T, G = xproj.shape

    def gather(flat, out):                                                  # [N, 4C] (a copy)
        return torch.index_select(xproj.reshape(B * T, G), 0, flat, out=out)

    return _run_packed(xproj, G, gather, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse)


def lstm_layer_inputs_ref(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor, w_hh: torch.Tensor,
                          w_p: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                          cell_clip: Optional[float] = None, proj_clip: Optional[float] = None,
                          reverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`lstm_layer_ref` of the input projections x @ w_ih^T + bias, from the layer input x [B, T, D]
    (w_ih [4C, D], bias [4C]), without grad: the input rows are gathered in the recurrence's packed
    order (D wide) and the one GEMM writes the packed gates directly, so the [B, T, 4C] projections
    are never materialised, scattered, zero-filled and gathered again (four passes over 64 KB per
    token in the original model: ~11% of a CPU forward, bench/NOTES.md #12). Same values as
    `lstm_layer_ref(project(x, ...), ...)` up to GEMM rounding order. Returns (out, h_T, c_T) as it."""
    B, T, D = x.shape

    def project_packed(flat, out):
        rows = x.reshape(B * T, D).index_select(0, flat)                   # [N, D]
        linear = linear_fn(w_ih, bias)
        with op_label("input_projection"):
            # into the reused gate buffer, PROJECTION_BLOCK_BYTES of output at a time: oneDNN's GEMM
            # has no out=, and a block that size is reused from the heap where the whole [N, 4C]
            # would be a fresh mmap (page faults) every call. Not MKL's addmm(out=): its rounding
            # depends on the row count, oneDNN's does not, so time chunks and batch composition
            # leave a sentence's vectors bit-identical.
            step = (max(1, PROJECTION_BLOCK_BYTES // (out.shape[1] * out.element_size()))
                    if out.device.type == "cpu" else out.shape[0])    # CUDA: cached memory, one GEMM
            for a in range(0, out.shape[0], step):
                out[a : a + step].copy_(linear(rows[a : a + step]))       # the gates' input part
            return out

    return _run_packed(x, w_ih.shape[0], project_packed, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip,
                       reverse)


def _run_packed(src, G, packed_input, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse):
    """src [B, T, *] (its shape, dtype and device), G = 4C, packed_input(flat, out) writes the packed
    gate inputs into out [N, 4C] (a buffer borrowed from `_workspace`) and returns it."""
    B, T = src.shape[:2]
    P = w_p.shape[0]
    out = torch.zeros(B * T, P, dtype=src.dtype, device=src.device)
    lens = lengths.detach().to("cpu", torch.long).clamp(0, T)
    if B == 0 or T == 0 or int(lens.max()) == 0:
        return out.view(B, T, P), h0, c0
    packing = _packing(lens, T, reverse, src.device)
    N = packing[3].numel()
    with _workspace.borrow(N * G, src.dtype, src.device) as scratch:
        packed_x = packed_input(packing[3], scratch.view(N, G))
        with op_label("lstm_layer"):
            return _recur_packed(packed_x, w_hh, w_p, h0, c0, cell_clip, proj_clip, packing, out, T)


def _recur_packed(packed_x, w_hh, w_p, h0, c0, cell_clip, proj_clip, packing, out, T):
    """The recurrence over packed rows: packed_x [N, 4C] (overwritten: the gates are computed in place),
    out [B*T, P] zeros -> (out [B, T, P], h_T, c_T)."""
    sorted_lens, order, counts, flat = packing
    N, G = packed_x.shape
    C, P, B = G // 4, w_p.shape[0], order.numel()
    dev, dt = packed_x.device, packed_x.dtype
    packed_h = torch.empty(N, P, dtype=dt, device=dev)

    order_d = order.to(dev)
    c = c0.index_select(0, order_d).to(dt)                                  # [B, C], updated in place
    h_prev = h0.index_select(0, order_d).to(dt)
    cell_out = torch.empty(B, C, dtype=dt, device=dev)
    # out (+)= x @ w^T for the running rows: our one-thread kernel where it runs (see _cpu_gemm)
    recurrent, project = few_rows_fn(w_hh), few_rows_fn(w_p)
    cell = cell_update_fn(dev, dt)         # the element-wise update: our fused kernel, or torch ops

    off = 0
    for t in range(T):
        n = counts[t]
        if n == 0:
            break
        g_n = packed_x[off : off + n]       # our own copy: the gates are computed in place
        with op_label("recurrent_gemm"):
            recurrent(h_prev[:n], g_n, accumulate=True)   # g_n += h_prev @ w_hh^T
        co = cell(g_n, c[:n], cell_out[:n], cell_clip)   # c[:n] updated, co = o * tanh(c)
        with op_label("cell_projection"):
            h_n = project(co, packed_h[off : off + n])
        if proj_clip is not None:
            h_n.clamp_(-proj_clip, proj_clip)
        h_prev = h_n                        # the next step's running rows are a prefix of these
        off += n

    out.index_copy_(0, flat, packed_h)
    # final states: each row's h after its last step (h0 for empty rows), its c as left in place
    starts = torch.tensor([0] + counts[:-1], dtype=torch.long).cumsum(0)   # packed offset of step t
    h_sorted = h0.index_select(0, order_d).to(dt)
    done = sorted_lens > 0
    if bool(done.any()):
        rows = torch.nonzero(done).view(-1)
        last = (starts[sorted_lens[rows] - 1] + rows).to(dev)
        h_sorted.index_copy_(0, rows.to(dev), packed_h.index_select(0, last))
    h_T = torch.empty_like(h_sorted).index_copy_(0, order_d, h_sorted)
    c_T = torch.empty_like(c).index_copy_(0, order_d, c)
    return out.view(B, T, P), h_T.to(h0.dtype), c_T.to(c0.dtype)
