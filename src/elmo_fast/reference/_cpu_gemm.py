"""Skinny CPU GEMMs against a fixed weight, through oneDNN's prepacked (blocked) weight layout.

The recurrence multiplies a few rows by the same large weight at every step (original model:
[B, 512] x [512, 16384]). With the weight prepacked once, oneDNN runs these about 3x faster than
the plain MKL GEMM on the 2-core x86 machines we measure on (bench/NOTES.md, "CPU reference path").
Falls back to torch.mm wherever the packed op is missing, fails its first-use check, or the
tensors are not CPU float32 without grad.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Tuple

import torch

_CACHE: Dict[int, Tuple[weakref.ref, int, torch.Tensor]] = {}
_STATUS = {"usable": None}


def _packed_op_usable() -> bool:
    if _STATUS["usable"] is None:
        try:
            w = torch.randn(64, 48)
            x = torch.randn(5, 48)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 5)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            ok = torch.allclose(y, x @ w.t(), rtol=1e-4, atol=1e-4)
        except Exception:  # op absent (no oneDNN build, other platform): plain GEMM
            ok = False
        _STATUS["usable"] = ok
    return _STATUS["usable"]


def right_mm(w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns f with f(x) = x @ w.t() for x [n, in], w [out, in] (the nn.Linear convention)."""
    # inference tensors have no version counter, so an in-place change could not be detected
    needs_grad = w.requires_grad and torch.is_grad_enabled()
    if (w.device.type != "cpu" or w.dtype != torch.float32 or needs_grad or w.is_inference()
            or not torch.backends.mkldnn.is_available() or not _packed_op_usable()):
        wt = w.t()
        return lambda x: torch.mm(x, wt)
    key = id(w)
    hit = _CACHE.get(key)
    if hit is None or hit[0]() is not w or hit[1] != w._version:
        # repacked when the weight changes in place (version) or a new tensor reuses the id
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 32)
        _CACHE[key] = (weakref.ref(w, lambda _ref, k=key: _CACHE.pop(k, None)), w._version, packed)
        hit = _CACHE[key]
    packed = hit[2]
    return lambda x: torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, None, "none", [], "")
