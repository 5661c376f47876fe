"""CPU GEMMs against a fixed weight, through oneDNN's prepacked (blocked) weight layout.

The recurrence multiplies a few rows by the same large weight at every step (original model:
[B, 512] x [512, 16384]). With the weight prepacked once, oneDNN runs these about 3x faster than
the plain MKL GEMM on the 2-core x86 machines we measure on, and the large input-projection and
highway GEMMs about 2x faster (bench/NOTES.md, "CPU reference path").
Falls back to torch.mm wherever the packed op is missing, fails its first-use check, or the
tensors are not CPU float32 without grad.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Optional, Tuple

import torch

_CACHE: Dict[Tuple[int, bool], Tuple[weakref.ref, int, torch.Tensor]] = {}
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


def linear_fn(w: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
              in_out: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns f with f(x) = x @ w.t() + bias for w [out, in] (the nn.Linear convention) or, with
    in_out=True, f(x) = x @ w + bias for w [in, out] (the TF layout of the highway weights).
    x: [n, in] -> [n, out]. The weight is packed once per (tensor, layout, version)."""
    # inference tensors have no version counter, so an in-place change could not be detected
    needs_grad = torch.is_grad_enabled() and (w.requires_grad or (bias is not None and bias.requires_grad))
    if (w.device.type != "cpu" or w.dtype != torch.float32 or needs_grad or w.is_inference()
            or not torch.backends.mkldnn.is_available() or not _packed_op_usable()):
        wt = w if in_out else w.t()
        if bias is None:
            return lambda x: torch.mm(x, wt)
        return lambda x: torch.addmm(bias, x, wt)
    key = (id(w), in_out)
    hit = _CACHE.get(key)
    if hit is None or hit[0]() is not w or hit[1] != w._version:
        # repacked when the weight changes in place (version) or a new tensor reuses the id
        packed = torch.ops.mkldnn._reorder_linear_weight((w.t() if in_out else w).contiguous(), 32)
        _CACHE[key] = (weakref.ref(w, lambda _ref, k=key: _CACHE.pop(k, None)), w._version, packed)
        hit = _CACHE[key]
    packed = hit[2]
    b = None if bias is None else bias.contiguous()
    return lambda x: torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, b, "none", [], "")

