"""CPU GEMMs against a fixed weight, with the weight repacked once for the kernel that runs them.

`linear_fn`: oneDNN's prepacked (blocked) weight layout. The recurrence multiplies a few rows by the
same large weight at every step (original model: [B, 512] x [512, 16384]); with the weight prepacked
once, oneDNN runs these about 3x faster than the plain MKL GEMM on the 2-core x86 machines we
measure on, and the large input-projection and highway GEMMs about 2x faster (bench/NOTES.md, "CPU
reference path"). Falls back to torch.mm wherever the packed op is missing, fails its first-use
check, or the tensors are not CPU float32 without grad.

`few_rows_fn`: the recurrence's two GEMMs per step on one thread, through our AVX2 kernel
(csrc/cpu/few_rows_gemm.cpp, elmo_fast._cpu_kernels) where it is built and the CPU runs it: 1.2-2x
oneDNN's speed at 1-32 rows on one core (bench/NOTES.md, issue 12, third session); `linear_fn`
otherwise. Its reference is `x @ w.t()`.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .._support import one_thread

_CACHE: Dict[Tuple[int, str], Tuple[weakref.ref, int, torch.Tensor]] = {}
_STATUS: Dict[str, Optional[bool]] = {"usable": None}
_KERNELS: Dict[str, Any] = {}


def _packed(w: torch.Tensor, layout: str, pack: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """pack(w), made once per (tensor, layout, version): repacked when the weight changes in place
    (version) or a new tensor reuses the id; dropped with the weight."""
    key = (id(w), layout)
    hit = _CACHE.get(key)
    if hit is None or hit[0]() is not w or hit[1] != w._version:
        _CACHE[key] = (weakref.ref(w, lambda _ref, k=key: _CACHE.pop(k, None)), w._version, pack(w))
        hit = _CACHE[key]
    return hit[2]


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
    def pack(w):
        return torch.ops.mkldnn._reorder_linear_weight((w.t() if in_out else w).contiguous(), 32)
    packed = _packed(w, "onednn_in_out" if in_out else "onednn", pack)
    b = None if bias is None else bias.contiguous()
    return lambda x: torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, b, "none", [], "")


def cpu_kernels():
    """The elmo_fast._cpu_kernels module when it is built and this CPU runs it (AVX2 + FMA), else None."""
    if "module" not in _KERNELS:
        try:
            from .. import _cpu_kernels as mod
            _KERNELS["module"] = mod if mod.supported() else None
            _KERNELS["why"] = "built" if mod.supported() else "built, but this CPU lacks AVX2/FMA"
        except ImportError as exc:  # not built (no compiler at install time, not x86-64)
            _KERNELS["module"], _KERNELS["why"] = None, f"not built ({exc})"
    return _KERNELS["module"]


def kernels_or_reference(native: Optional[bool]):
    """For a launcher with a reference path: the module where the kernels run and native is not
    False, None (take the reference) otherwise; native=True and no kernels raises RuntimeError."""
    mod = None if native is False else cpu_kernels()
    if native and mod is None:
        raise RuntimeError(f"the CPU kernels do not run here: {cpu_kernels_status()}")
    return mod


def cpu_kernels_status() -> str:
    """One line for records and `elmo-fast info`: whether the CPU kernels run here, and why not."""
    cpu_kernels()
    return _KERNELS["why"]


def float32_rows(t: torch.Tensor, width: int) -> bool:
    """Whether t is what the CPU kernels take: a CPU float32 [rows, width] matrix whose elements are
    contiguous within a row (rows may be strided, never overlapping)."""
    return (t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2 and t.shape[1] == width
            and (width <= 1 or t.stride(1) == 1) and (t.shape[0] <= 1 or t.stride(0) >= width))


def pack_panels(w: torch.Tensor, panel: int = 16) -> torch.Tensor:
    """w [N, K] -> [ceil(N / panel), K, panel] with out[p, k, j] = w[panel * p + j, k] (zero columns
    past N): the few-rows kernel's weight layout, each panel one contiguous stream."""
    N, K = w.shape
    padded = w.new_zeros(-(-N // panel) * panel, K)
    padded[:N] = w
    return padded.view(-1, panel, K).transpose(1, 2).contiguous()


def few_rows_fn(w: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Returns f with f(x, out, accumulate=False): out = x @ w.t(), or out += x @ w.t() when
    accumulate, for w [N, K], x [n, K] and out [n, N] (rows may be strided, elements contiguous;
    out must not overlap x). Meant for a few rows (the recurrence: n = the rows still running) on
    ONE thread: our kernel when it runs here, the thread count is 1 and the tensors are CPU float32
    without grad; `linear_fn(w)` otherwise. Returns out."""
    mod = cpu_kernels()
    needs_grad = torch.is_grad_enabled() and w.requires_grad
    if (mod is None or w.device.type != "cpu" or w.dtype != torch.float32 or needs_grad or w.is_inference()
            or w.dim() != 2 or torch.get_num_threads() != 1):
        linear = linear_fn(w)

        def fallback(x, out, accumulate=False):
            y = linear(x)
            with one_thread(out.device):   # a pass over [n, N]: see one_thread
                return out.add_(y) if accumulate else out.copy_(y)
        return fallback
    wp = _packed(w, "panels", lambda w: pack_panels(w.detach(), mod.PANEL))
    N, K = w.shape

    def run(x, out, accumulate=False):
        n = x.shape[0]
        if not (float32_rows(x, K) and float32_rows(out, N) and out.shape[0] == n):
            raise ValueError(f"few_rows_fn: x {tuple(x.shape)} {x.dtype} strides {x.stride()}, out "
                             f"{tuple(out.shape)} {out.dtype} strides {out.stride()} for a weight [{N}, {K}]")
        mod.gemm(x.data_ptr(), n, K, max(K, x.stride(0)), wp.data_ptr(), N, out.data_ptr(),
                 max(N, out.stride(0)), accumulate)
        return out
    return run
