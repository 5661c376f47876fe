"""One biLSTM layer of ELMo: input projections, both directions, residual; in time chunks.

The input projections of a whole batch are [B, T, 4C] per direction (original model: 64 KB per
token in fp32, 6.5 GB for one 100 k-token line), so they are computed `time_chunk` steps at a time
and the recurrence carries its state from chunk to chunk, exactly: the forward direction walks the
chunks from the start, the backward one from the end, and a row's local length in a chunk
[a, b) is clamp(length - a, 0, b - a) in both directions (a reversed chunk starts at the row's last
real position inside it). The backward chunks are aligned to the end of the batch, so chunk k of
both directions has the same shape and a backend can run the two in one launch.

Memory beyond the outputs: min(T, time_chunk) * B * 4C * itemsize * 4 bytes (both directions'
projections and the recurrence's packed copy of them), at most the workspace budget
(ELMO_FAST_WORKSPACE_MB, default 1 GiB) with the default chunk.
"""
from __future__ import annotations

import threading
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._support import chunk_len
from ._cpu_gemm import linear_fn
from .lstm import lstm_layer_inputs_ref, lstm_layer_ref

# one direction's recurrence problem: (xproj, w_hh, w_p, lengths, h0, c0, reverse)
Problem = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, bool]
Recurrence = Callable[[Sequence[Problem], Optional[float], Optional[float]],
                      List[Tuple[Tensor, Tensor, Tensor]]]


def each_direction(lstm_layer: Callable) -> Recurrence:
    """A recurrence that runs the problems one after the other with a one-direction `lstm_layer`."""
    def run(problems, cell_clip, proj_clip):
        return [lstm_layer(xp, w_hh, w_p, lens, h0, c0, cell_clip, proj_clip, reverse)
                for xp, w_hh, w_p, lens, h0, c0, reverse in problems]
    return run


# run the two directions of a layer concurrently, one CPU thread each (see both_directions)
CONCURRENT_DIRECTIONS = True


def both_directions(calls: Sequence[tuple]) -> List[Tuple[Tensor, Tensor, Tensor]]:
    """`lstm_layer_inputs_ref(*call)` for the forward and the backward call. On the CPU with two or
    more torch threads (and CONCURRENT_DIRECTIONS), the backward direction runs on a second Python
    thread and each direction on one intra-op thread: the directions are independent, so the
    cores then meet only at the end of the layer instead of in ~13 OpenMP regions per step, and a
    core that another process keeps busy slows one direction instead of stalling every region of
    both (bench/NOTES.md #12). torch's thread count is restored afterwards; grad and inference mode
    are carried into the worker (they are per thread). Same values as running them in turn."""
    n = torch.get_num_threads()
    if not CONCURRENT_DIRECTIONS or n < 2 or len(calls) != 2 or calls[0][0].device.type != "cpu":
        return [lstm_layer_inputs_ref(*call) for call in calls]
    modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    box: dict = {}

    def backward() -> None:
        torch.set_num_threads(1)
        try:
            # inference_mode(False) turns grad on: the grad mode is set inside it
            with torch.inference_mode(modes[1]), torch.set_grad_enabled(modes[0]):
                box["out"] = lstm_layer_inputs_ref(*calls[1])
        except BaseException as exc:  # re-raised in the calling thread
            box["error"] = exc

    worker = threading.Thread(target=backward, name="elmo_fast-backward-direction", daemon=True)
    torch.set_num_threads(1)
    try:
        worker.start()
        forward = lstm_layer_inputs_ref(*calls[0])
    finally:
        worker.join()
        torch.set_num_threads(n)
    if "error" in box:
        raise box["error"]
    return [forward, box["out"]]


def default_time_chunk(B: int, G: int, itemsize: int) -> int:
    """Steps per chunk: 4 * B * G * itemsize bytes of scratch per step within the workspace budget."""
    return chunk_len(4 * max(1, B) * G * itemsize)


def project(x: Tensor, real: Tensor, w_ih: Tensor, bias: Tensor) -> Tensor:
    """x [B, t, D], real [B, t] bool -> [B, t, 4C] = x @ w_ih^T + bias at real positions, zeros at
    padding (never run; zero rather than garbage). One GEMM over the real positions only: a
    quarter to a half of the work in a length-mixed batch."""
    B, t, D = x.shape
    flat = real.reshape(-1)
    rows, pad = flat.nonzero().view(-1), (~flat).nonzero().view(-1)
    xproj = x.new_empty(B * t, w_ih.shape[0])
    xproj.index_copy_(0, rows, linear_fn(w_ih, bias)(x.reshape(B * t, D).index_select(0, rows)))
    xproj.index_fill_(0, pad, 0.0)
    return xproj.view(B, t, -1)


def bilstm_layer_ref(
    x: Sequence[Tensor],
    weights: Sequence[Sequence[Tensor]],
    lengths: Tensor,
    h0: Tensor,
    c0: Tensor,
    cell_clip: Optional[float] = None,
    proj_clip: Optional[float] = None,
    residual: bool = False,
    time_chunk: Optional[int] = None,
    *,
    recurrence: Optional[Recurrence] = None,
) -> Tuple[Tuple[Tensor, Tensor], Tensor, Tensor]:
    """Both directions of one biLSTM layer.

    x:          (x_fwd, x_bwd), each [B, T, D]: the input of each direction (the same tensor for
                the first layer; each direction's previous output after that)
    weights:    per direction (w_ih [4C, D], bias [4C], w_hh [4C, P], w_p [P, C])
    lengths:    [B] int, real positions of each row (a prefix)
    h0, c0:     [B, 2P], [B, 2C] the state, forward half first
    residual:   add each direction's input to its output (ELMo's skip connection, layers > 0)
    time_chunk: steps whose input projections exist at once (None: from the workspace budget)
    recurrence: runs one chunk of both directions from its input projections (default: the reference,
                `lstm_layer_ref` per direction; without grad `lstm_layer_inputs_ref`, which
                projects the inputs itself)
    returns     ((out_fwd, out_bwd) [B, T, P] each, zeros at padding), h_T [B, 2P], c_T [B, 2C]
    """
    # the reference recurrence without grad reads the layer input itself (`lstm_layer_inputs_ref`:
    # the projections go straight into its packed order); other recurrences take [B, t, 4C] projections
    fused = recurrence is None and not (torch.is_grad_enabled() and any(
        t.requires_grad for t in [*x, h0, c0, *(w for ws in weights for w in ws)]))
    run = recurrence or each_direction(lstm_layer_ref)
    B, T, _ = x[0].shape
    P, C = h0.shape[1] // 2, c0.shape[1] // 2
    G = weights[0][0].shape[0]
    tc = int(time_chunk) if time_chunk else default_time_chunk(B, G, x[0].element_size())
    if tc < 1:
        raise ValueError(f"time_chunk must be at least 1, got {time_chunk}")
    lengths = lengths.to(x[0].device, torch.long)
    real = torch.arange(T, device=lengths.device).view(1, T) < lengths.view(B, 1)
    h = [h0[:, :P].contiguous(), h0[:, P:].contiguous()]
    c = [c0[:, :C].contiguous(), c0[:, C:].contiguous()]
    outs: List[Optional[Tensor]] = [None, None]
    for k in range(max(1, -(-T // tc))):
        spans = ((k * tc, min(T, (k + 1) * tc)), (max(0, T - (k + 1) * tc), T - k * tc))
        problems, calls = [], []
        for d, (a, b) in enumerate(spans):
            w_ih, bias, w_hh, w_p = weights[d]
            local = (lengths - a).clamp(0, b - a)
            if fused:
                calls.append((x[d][:, a:b], w_ih, bias, w_hh, w_p, local, h[d], c[d], cell_clip, proj_clip,
                              d == 1))
                continue
            xproj = project(x[d][:, a:b], real[:, a:b], w_ih, bias)
            problems.append((xproj, w_hh, w_p, local, h[d], c[d], d == 1))
        results = both_directions(calls) if fused else run(problems, cell_clip, proj_clip)
        for d, ((a, b), (out, h[d], c[d])) in enumerate(zip(spans, results)):
            if a == 0 and b == T:
                outs[d] = out
                continue
            if outs[d] is None:
                outs[d] = out.new_zeros(B, T, out.shape[-1])
            outs[d][:, a:b] = out
    if residual:
        outs = [o + xi for o, xi in zip(outs, x)]
    return (outs[0], outs[1]), torch.cat(h, -1), torch.cat(c, -1)
