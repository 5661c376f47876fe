"""Persistent projected-LSTM CUDA kernel (csrc/): argument checks, launch, custom ops, support rules.

`lstm_layer_cuda` has the op's signature (see `elmo_fast.reference.lstm.lstm_layer_ref`) and runs
one direction of one layer over every timestep in a single cooperative launch; `bilstm_layer_cuda`
(the `bilstm_layer` op) runs both directions of each time chunk in one launch.

Precisions (fixed by xproj's dtype; xproj, w_hh and w_p must share it):
  float32   everything fp32 (the exact path)
  bfloat16  xproj, weights and out bf16; every product accumulated in fp32; h and c state fp32
h0/c0 may be fp32 or the weights' dtype; h_T/c_T come back in the dtype of h0/c0 (keep them fp32
for stateful use in bf16 so the carried state is not rounded). lengths: int32 or int64 on the
same device; values outside [0, T] are clamped by the kernel (no host sync to check them).

The extension itself (finding, JIT-building, loading it, its status) is `elmo_fast._lstm_ext`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._lstm_ext import extension_info, extension_status, load_extension  # noqa: F401  (re-exported)
from ._support import Support, bilstm_sizes, lstm_sizes, tensors_of
from .reference.bilstm import bilstm_layer_ref

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_RESIDENCY = {"auto": -1, "global": 0, "shared": 1}
# the h tile (8 rows x P fp32) must fit in shared memory next to the m tile even off chip
MAX_P = 4096
NAMES = ("xproj", "w_hh", "w_p", "lengths", "h0", "c0")


# ------------------------------------------------------------------------------------------------
# Argument checks (before any pointer crosses)
# ------------------------------------------------------------------------------------------------
def _check_args(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, need_contiguous: bool,
                need_cuda: bool = True) -> Tuple[int, int, int, int]:
    """Returns (B, T, C, P). TypeError for wrong types/dtypes, ValueError for shapes, devices,
    layout and clip values; every message names the argument."""
    named = dict(xproj=xproj, w_hh=w_hh, w_p=w_p, lengths=lengths, h0=h0, c0=c0)
    s = lstm_sizes(dict(named, cell_clip=cell_clip, proj_clip=proj_clip))
    B, T, C, P = s["B"], s["T"], s["C"], s["P"]
    if P % 2 or P > MAX_P:
        raise ValueError(f"w_hh: the CUDA LSTM needs an even projection size P <= {MAX_P}, got P={P}")
    if xproj.dtype not in _DTYPES:
        raise TypeError(f"xproj must be float32 or bfloat16, got {xproj.dtype}")
    if need_contiguous:
        for name, t in named.items():
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous (strides {t.stride()} for shape "
                                 f"{tuple(t.shape)})")
    if need_cuda:
        for name, t in named.items():
            if t.device.type != "cuda":
                raise ValueError(f"{name} is on {t.device}; the CUDA LSTM needs CUDA tensors")
        if len({t.device for t in named.values()}) != 1:
            where = {k: str(t.device) for k, t in named.items()}
            raise ValueError(f"all tensors must be on one device, got {where}")
    if need_contiguous:
        for name, t in named.items():
            if t.numel() and t.data_ptr() % 16:
                raise ValueError(f"{name} must be 16-byte aligned (a view at an odd offset; pass a copy)")
    return B, T, C, P


def _aligned(t: Tensor) -> Tensor:
    t = t.contiguous()
    return t if t.numel() == 0 or t.data_ptr() % 16 == 0 else t.clone()


def _require_cuda():
    if not torch.cuda.is_available():
        raise RuntimeError("the CUDA LSTM needs a CUDA device and torch built with CUDA; none is available")


# ------------------------------------------------------------------------------------------------
# Launch
# ------------------------------------------------------------------------------------------------
def _run(dirs: List[Tuple[Tensor, ...]], reverse: List[bool], cell_clip, proj_clip, residency: str):
    """dirs: per direction (xproj, w_hh, w_p, lengths, h0, c0), already checked (contiguous,
    aligned, CUDA, same shapes across directions). Returns per direction (out, h_T, c_T)."""
    _require_cuda()
    ext = load_extension()
    xproj = dirs[0][0]
    B, T, G = xproj.shape
    C, P = G // 4, dirs[0][1].shape[1]
    dev = xproj.device
    results, keep = [], []
    ptr: Dict[str, List[int]] = {k: [] for k in ("xproj", "w_hh", "w_pT", "lengths", "out", "h", "c")}
    for xp, w_hh, w_p, lengths, h0, c0 in dirs:
        w_pT = w_p.t().contiguous()
        lens = lengths.to(torch.int32).contiguous()
        h = h0.to(torch.float32, copy=True).contiguous()
        c = c0.to(torch.float32, copy=True).contiguous()
        out = torch.empty(B, T, P, dtype=xp.dtype, device=dev)
        keep += [w_pT, lens]
        for k, t in (("xproj", xp), ("w_hh", w_hh), ("w_pT", w_pT), ("lengths", lens), ("out", out),
                     ("h", h), ("c", c)):
            ptr[k].append(t.data_ptr())
        results.append((out, h, c, h0.dtype, c0.dtype))
    if B == 0 or T == 0:
        return [(o, h.to(hd), c.to(cd)) for o, h, c, hd, cd in results]
    plan = ext.plan(_DTYPES[xproj.dtype], len(dirs), B, C, P, dev.index, _RESIDENCY[residency])
    ws = torch.empty(max(1, plan["workspace_bytes"] // 4), dtype=torch.float32, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
    ext.launch(_DTYPES[xproj.dtype], len(dirs), B, T, C, P, ptr["xproj"], ptr["w_hh"], ptr["w_pT"],
               ptr["lengths"], ptr["out"], ptr["h"], ptr["c"], [int(bool(r)) for r in reverse],
               ws.data_ptr(), ws.numel() * 4, cell_clip, proj_clip, stream, dev.index, _RESIDENCY[residency])
    # every buffer was allocated on the launch stream, so the caching allocator's stream order
    # keeps it alive for the kernel after `keep` and `ws` go out of scope
    del keep, ws
    return [(o, h.to(hd), c.to(cd)) for o, h, c, hd, cd in results]


@torch.library.custom_op("elmo_fast::lstm_layer", mutates_args=())
def _lstm_layer_op(xproj: Tensor, w_hh: Tensor, w_p: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor,
                   cell_clip: Optional[float], proj_clip: Optional[float], reverse: bool
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    _check_args(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, need_contiguous=True)
    return tuple(_run([(xproj, w_hh, w_p, lengths, h0, c0)], [reverse], cell_clip, proj_clip, "auto")[0])


@_lstm_layer_op.register_fake
def _lstm_layer_fake(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse):
    B, T, _ = xproj.shape
    return (xproj.new_empty(B, T, w_hh.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape))


def lstm_layer_cuda(
    xproj: Tensor, w_hh: Tensor, w_p: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor,
    cell_clip: Optional[float] = None, proj_clip: Optional[float] = None, reverse: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One direction of one projected-LSTM layer, persistent CUDA kernel (op `elmo_fast::lstm_layer`).

    xproj [B, T, 4C], w_hh [4C, P], w_p [P, C], lengths [B], h0 [B, P], c0 [B, C]
    -> out [B, T, P] (xproj's dtype), h_T [B, P], c_T [B, C] (dtypes of h0, c0).
    Same semantics as `lstm_layer_ref`. Non-contiguous inputs are copied.
    """
    _check_args(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, need_contiguous=False)
    args = [_aligned(t) for t in (xproj, w_hh, w_p, lengths, h0, c0)]
    cell_clip = None if cell_clip is None else float(cell_clip)
    proj_clip = None if proj_clip is None else float(proj_clip)
    return torch.ops.elmo_fast.lstm_layer(*args, cell_clip, proj_clip, bool(reverse))


def _lstm_layer_cuda_with(xproj, w_hh, w_p, lengths, h0, c0, cell_clip=None, proj_clip=None, reverse=False,
                          residency: str = "auto"):
    """`lstm_layer_cuda` with the weights' residency forced: 'shared' (on chip; error if they do
    not fit), 'global' (the L2 fallback path) or 'auto'. For tests and benchmarks."""
    if residency not in _RESIDENCY:
        raise ValueError(f"residency must be one of {sorted(_RESIDENCY)}, got {residency!r}")
    _check_args(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, need_contiguous=False)
    args = tuple(_aligned(t) for t in (xproj, w_hh, w_p, lengths, h0, c0))
    return _run([args], [reverse], cell_clip, proj_clip, residency)[0]


def _check_pair(fwd: Sequence[Tensor], bwd: Sequence[Tensor], cell_clip, proj_clip
                ) -> List[Tuple[Tensor, ...]]:
    checked = []
    for name, args in (("fwd", fwd), ("bwd", bwd)):
        if len(args) != 6:
            raise ValueError(f"{name} must be (xproj, w_hh, w_p, lengths, h0, c0)")
        _check_args(*args, cell_clip, proj_clip, need_contiguous=False)
        checked.append(tuple(_aligned(t) for t in args))
    if checked[0][0].shape != checked[1][0].shape or checked[0][1].shape != checked[1][1].shape:
        raise ValueError("fwd and bwd must have the same shapes")
    if checked[0][0].dtype != checked[1][0].dtype or checked[0][0].device != checked[1][0].device:
        raise ValueError("fwd and bwd must share dtype and device")
    return checked


@torch.library.custom_op("elmo_fast::lstm_bidir", mutates_args=())
def _lstm_bidir_op(xf: Tensor, w_hh_f: Tensor, w_p_f: Tensor, len_f: Tensor, h0_f: Tensor, c0_f: Tensor,
                   xb: Tensor, w_hh_b: Tensor, w_p_b: Tensor, len_b: Tensor, h0_b: Tensor, c0_b: Tensor,
                   cell_clip: Optional[float], proj_clip: Optional[float]
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dirs = [(xf, w_hh_f, w_p_f, len_f, h0_f, c0_f), (xb, w_hh_b, w_p_b, len_b, h0_b, c0_b)]
    for d in dirs:
        _check_args(*d, cell_clip, proj_clip, need_contiguous=True)
    (of, hf, cf), (ob, hb, cb) = _run(dirs, [False, True], cell_clip, proj_clip, "auto")
    return of, hf, cf, ob, hb, cb


@_lstm_bidir_op.register_fake
def _lstm_bidir_fake(xf, w_hh_f, w_p_f, len_f, h0_f, c0_f, xb, w_hh_b, w_p_b, len_b, h0_b, c0_b,
                     cell_clip, proj_clip):
    return (*_lstm_layer_fake(xf, w_hh_f, w_p_f, len_f, h0_f, c0_f, cell_clip, proj_clip, False),
            *_lstm_layer_fake(xb, w_hh_b, w_p_b, len_b, h0_b, c0_b, cell_clip, proj_clip, True))


def lstm_bidir_cuda(fwd: Sequence[Tensor], bwd: Sequence[Tensor], cell_clip=None, proj_clip=None,
                    residency: str = "auto"):
    """Both directions of a layer in ONE launch (two independent problems, same shapes).

    fwd, bwd: (xproj, w_hh, w_p, lengths, h0, c0) each; bwd runs reversed.
    Returns ((out, h_T, c_T) forward, (out, h_T, c_T) backward). residency: as `_lstm_layer_cuda_with`
    (anything but 'auto' bypasses the custom op: tests and benchmarks).
    """
    if residency not in _RESIDENCY:
        raise ValueError(f"residency must be one of {sorted(_RESIDENCY)}, got {residency!r}")
    checked = _check_pair(fwd, bwd, cell_clip, proj_clip)
    cell_clip = None if cell_clip is None else float(cell_clip)
    proj_clip = None if proj_clip is None else float(proj_clip)
    if residency != "auto":
        f, b = _run(checked, [False, True], cell_clip, proj_clip, residency)
        return f, b
    of, hf, cf, ob, hb, cb = torch.ops.elmo_fast.lstm_bidir(*checked[0], *checked[1], cell_clip, proj_clip)
    return (of, hf, cf), (ob, hb, cb)


def _bidir_recurrence(problems, cell_clip, proj_clip):
    """The bilstm schedule's recurrence: one chunk of both directions in one launch."""
    (xf, whf, wpf, lf, hf, cf, _), (xb, whb, wpb, lb, hb, cb, _) = problems
    f, b = lstm_bidir_cuda((xf, whf, wpf, lf, hf, cf), (xb, whb, wpb, lb, hb, cb), cell_clip, proj_clip)
    return [f, b]


def bilstm_layer_cuda(x, weights, lengths, h0, c0, cell_clip=None, proj_clip=None, residual=False,
                      time_chunk=None):
    """The `bilstm_layer` op on CUDA: each time chunk's input projections by cuBLAS, then both
    directions of the chunk in one persistent launch. Semantics of `bilstm_layer_ref`."""
    return bilstm_layer_ref(x, weights, lengths, h0, c0, cell_clip, proj_clip, residual, time_chunk,
                            recurrence=_bidir_recurrence)


# ------------------------------------------------------------------------------------------------
# Support rules for the dispatcher
# ------------------------------------------------------------------------------------------------
def _device_and_extension(inputs: Dict[str, Any], sizes: Dict[str, int]) -> List[str]:
    """What the declared rules cannot see: a CUDA device, an even P, and a loadable extension."""
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("no CUDA device (torch.cuda.is_available() is False)")
    if sizes.get("P", 0) % 2:
        reasons.append(f"the CUDA LSTM needs an even projection size, got P={sizes['P']}")
    # the extension is loaded (maybe JIT-built, once) only for a call it could otherwise run
    if reasons or any(t.device.type != "cuda" for t in tensors_of(inputs)):
        return reasons
    try:
        load_extension()
    except RuntimeError as exc:
        reasons.append(f"extension unavailable: {exc}")
    return reasons


SUPPORT = Support(devices=frozenset({"cuda"}), dtype_of="xproj", rule=lstm_sizes, limits={"P": MAX_P},
                  extra=_device_and_extension)
BILSTM_SUPPORT = Support(devices=frozenset({"cuda"}), dtype_of="x", rule=bilstm_sizes, limits={"P": MAX_P},
                         extra=_device_and_extension)


def not_supported_reasons(inputs: Dict[str, Any], forced: bool) -> List[str]:
    """Why the CUDA backend cannot run this `lstm_layer` call ([] = it can). Builds nothing on a
    machine without a CUDA device."""
    return SUPPORT.not_supported_reasons(inputs, forced)
