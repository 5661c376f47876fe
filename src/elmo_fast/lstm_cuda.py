"""Persistent projected-LSTM CUDA kernel (csrc/): Python wrapper, custom op, support rules.

`lstm_layer_cuda` has the op's signature (see `elmo_fast.reference.lstm.lstm_layer_ref`) and runs
one direction of one layer over every timestep in a single cooperative launch.

Precisions (fixed by xproj's dtype; xproj, w_hh and w_p must share it):
  float32   everything fp32 (the exact path)
  bfloat16  xproj, weights and out bf16; every product accumulated in fp32; h and c state fp32
h0/c0 may be fp32 or the weights' dtype; h_T/c_T come back in the dtype of h0/c0 (keep them fp32
for stateful use in bf16 so the carried state is not rounded). lengths: int32 or int64 on the
same device; values outside [0, T] are clamped by the kernel (no host sync to check them).

The extension elmo_fast._lstm_cuda takes raw pointers and a stream and does not link libtorch.
It comes from `pip install -e .` on a machine with nvcc, or is JIT-built on first use into
$ELMO_FAST_CACHE (default ~/.cache/elmo_fast/ext) when nvcc is found (ELMO_FAST_JIT=0 disables).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ._config import cache_root
from .ops._dispatch import device_reasons

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_RESIDENCY = {"auto": -1, "global": 0, "shared": 1}
# the h tile (8 rows x P fp32) must fit in shared memory next to the m tile even off chip
MAX_P = 4096

# ------------------------------------------------------------------------------------------------
# The extension: prebuilt, or JIT-built from the shipped sources
# ------------------------------------------------------------------------------------------------
_lock = threading.Lock()
_ext = None
_ext_error: Optional[str] = None
_ext_origin: Optional[str] = None


def csrc_dir() -> Optional[Path]:
    """The CUDA sources: elmo_fast/csrc when installed, <repo>/csrc for an editable install."""
    here = Path(__file__).resolve().parent
    for cand in (here / "csrc", here.parents[1] / "csrc"):
        if (cand / "lstm_persistent.cu").is_file() and (cand / "nvcc_build.py").is_file():
            return cand
    return None


def _nvcc_build_module(src: Path):
    spec = importlib.util.spec_from_file_location("_elmo_fast_nvcc_build", src / "nvcc_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cache_dir() -> Path:
    return Path(cache_root("ext"))


def _jit_key(src: Path, archs: List[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in src.iterdir() if p.suffix in (".cu", ".cuh", ".h", ".cpp", ".py")):
        h.update(name.encode())
        h.update((src / name).read_bytes())
    h.update(";".join(archs).encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def build_extension(out_dir: Optional[Path] = None, archs: Optional[str] = None, log=None) -> Path:
    """Compiles the extension with nvcc into out_dir (default: the JIT cache) and returns the .so."""
    src = csrc_dir()
    if src is None:
        raise RuntimeError("the CUDA sources (csrc/) are not shipped with this installation")
    nb = _nvcc_build_module(src)
    arch_list = nb.arch_list(archs)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / _jit_key(src, arch_list)
    so = out_dir / f"_lstm_cuda{nb.ext_suffix()}"
    if not so.exists():
        tmp = out_dir / f"tmp-{os.getpid()}"
        built = nb.build(tmp / so.name, tmp / "obj", archs=arch_list, src_dir=src, log=log or (lambda s: None))
        os.replace(built, so)  # atomic: a concurrent process sees a whole file or none
    return so


def _import_from(path: Path):
    spec = importlib.util.spec_from_file_location("elmo_fast._lstm_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_extension(jit: bool = True):
    """The extension module; JIT-builds it when missing (nvcc needed). Raises RuntimeError."""
    global _ext, _ext_error, _ext_origin
    with _lock:
        if _ext is not None:
            return _ext
        try:
            _ext = importlib.import_module("elmo_fast._lstm_cuda")
            _ext_origin = f"prebuilt at {_ext.__file__}"
            return _ext
        except ImportError as exc:
            prebuilt_error = f"{type(exc).__name__}: {exc}"
        if not jit or os.environ.get("ELMO_FAST_JIT", "1") == "0":
            _ext_error = f"not built ({prebuilt_error}); JIT build disabled"
            raise RuntimeError(_ext_error)
        try:
            import warnings

            warnings.warn("elmo_fast: JIT-building the CUDA LSTM extension with nvcc (once, ~30 s)")
            so = build_extension()
            _ext = _import_from(so)
            _ext_origin = f"JIT-built at {so}"
            return _ext
        except Exception as exc:
            _ext_error = f"not built ({prebuilt_error}) and the JIT build failed: {exc}"
            raise RuntimeError(_ext_error) from exc


def extension_status() -> str:
    """One line for `elmo-fast info`: is the extension there, where, for which arch; else why not
    and how to get it. Never compiles anything."""
    if _ext is not None:
        info = _ext.build_info()
        return f"built ({_ext_origin}; arch {info['arch']}, CUDA runtime {info['cudart_version']})"
    try:
        spec = importlib.util.find_spec("elmo_fast._lstm_cuda")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        try:
            module = importlib.import_module("elmo_fast._lstm_cuda")
            info = module.build_info()
            return f"built (prebuilt at {module.__file__}; arch {info['arch']}, CUDA runtime {info['cudart_version']})"
        except ImportError as exc:
            return f"present at {spec.origin} but fails to import ({exc}); rebuild with `pip install -e .`"
    src = csrc_dir()
    how = "build it with `pip install -e .` on a machine with nvcc (ELMO_FAST_BUILD_CUDA=1 to require it)"
    if src is None:
        return f"not built; sources not shipped; {how}"
    nvcc = _nvcc_build_module(src).find_nvcc()
    if _ext_error:
        return f"{_ext_error}; {how}"
    if nvcc and os.environ.get("ELMO_FAST_JIT", "1") != "0":
        return f"not built; will be JIT-built on first use with {nvcc} into {cache_dir()}, or {how}"
    return f"not built and no nvcc for a JIT build; {how}"


# ------------------------------------------------------------------------------------------------
# Argument checks (before any pointer crosses)
# ------------------------------------------------------------------------------------------------
def _check_args(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, need_contiguous: bool,
                need_cuda: bool = True) -> Tuple[int, int, int, int]:
    """Returns (B, T, C, P). TypeError for wrong types/dtypes, ValueError for shapes, devices,
    layout and clip values; every message names the argument."""
    named = dict(xproj=xproj, w_hh=w_hh, w_p=w_p, lengths=lengths, h0=h0, c0=c0)
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dims = dict(xproj=3, w_hh=2, w_p=2, lengths=1, h0=2, c0=2)
    for name, nd in dims.items():
        if named[name].dim() != nd:
            raise ValueError(f"{name} must have {nd} dimensions, got shape {tuple(named[name].shape)}")
    B, T, G = xproj.shape
    if G % 4:
        raise ValueError(f"xproj's last dimension must be 4*C (gates i, f, g, o), got {G}")
    C, P = G // 4, w_hh.shape[1]
    expect = dict(w_hh=(4 * C, P), w_p=(P, C), lengths=(B,), h0=(B, P), c0=(B, C))
    for name, shape in expect.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (B={B}, C={C}, P={P}), got {tuple(named[name].shape)}")
    if P % 2 or P > MAX_P:
        raise ValueError(f"w_hh: the CUDA LSTM needs an even projection size P <= {MAX_P}, got P={P}")
    if xproj.dtype not in _DTYPES:
        raise TypeError(f"xproj must be float32 or bfloat16, got {xproj.dtype}")
    for name in ("w_hh", "w_p"):
        if named[name].dtype != xproj.dtype:
            raise TypeError(f"{name} must have xproj's dtype {xproj.dtype}, got {named[name].dtype}")
    for name in ("h0", "c0"):
        if named[name].dtype not in (torch.float32, xproj.dtype):
            raise TypeError(f"{name} must be float32 or {xproj.dtype}, got {named[name].dtype}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths must be int32 or int64, got {lengths.dtype}")
    for name, v in (("cell_clip", cell_clip), ("proj_clip", proj_clip)):
        if v is not None and not (isinstance(v, (int, float)) and float(v) >= 0.0):
            raise ValueError(f"{name} must be None or a number >= 0, got {v!r}")
    if need_contiguous:
        for name, t in named.items():
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous (strides {t.stride()} for shape {tuple(t.shape)})")
    if need_cuda:
        for name, t in named.items():
            if t.device.type != "cuda":
                raise ValueError(f"{name} is on {t.device}; the CUDA LSTM needs CUDA tensors")
        if len({t.device for t in named.values()}) != 1:
            raise ValueError(f"all tensors must be on one device, got { {k: str(t.device) for k, t in named.items()} }")
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
        for k, t in (("xproj", xp), ("w_hh", w_hh), ("w_pT", w_pT), ("lengths", lens), ("out", out), ("h", h), ("c", c)):
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


def lstm_layer_cuda_with(xproj, w_hh, w_p, lengths, h0, c0, cell_clip=None, proj_clip=None, reverse=False,
                         residency: str = "auto"):
    """`lstm_layer_cuda` with the weights' residency forced: 'shared' (on chip; error if they do
    not fit), 'global' (the L2 fallback path) or 'auto'. For tests and benchmarks."""
    if residency not in _RESIDENCY:
        raise ValueError(f"residency must be one of {sorted(_RESIDENCY)}, got {residency!r}")
    _check_args(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, need_contiguous=False)
    args = tuple(_aligned(t) for t in (xproj, w_hh, w_p, lengths, h0, c0))
    return _run([args], [reverse], cell_clip, proj_clip, residency)[0]


def lstm_bidir_cuda(fwd: Tuple[Tensor, ...], bwd: Tuple[Tensor, ...], cell_clip=None, proj_clip=None,
                    residency: str = "auto"):
    """Both directions of a layer in ONE launch (two independent problems, same shapes).

    fwd, bwd: (xproj, w_hh, w_p, lengths, h0, c0) each; bwd runs reversed.
    Returns ((out, h_T, c_T) forward, (out, h_T, c_T) backward).
    """
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
    f, b = _run(checked, [False, True], cell_clip, proj_clip, residency)
    return f, b


# ------------------------------------------------------------------------------------------------
# Support rules for the dispatcher
# ------------------------------------------------------------------------------------------------
def not_supported_reasons(inputs: Dict[str, Any], forced: bool) -> List[str]:
    """Why the CUDA backend cannot run this call ([] = it can). Builds nothing on a CPU machine."""
    reasons = list(device_reasons(inputs, forced, allow_interpreter=False))
    if not torch.cuda.is_available():
        reasons.append("no CUDA device (torch.cuda.is_available() is False)")
    try:
        _check_args(*(inputs.get(k) for k in ("xproj", "w_hh", "w_p", "lengths", "h0", "c0")),
                    inputs.get("cell_clip"), inputs.get("proj_clip"), need_contiguous=False, need_cuda=False)
    except (TypeError, ValueError) as exc:
        reasons.append(str(exc))
    if reasons:
        status = extension_status()
        if not status.startswith("built"):
            reasons.append(f"extension {status}")
        return reasons
    try:
        load_extension()
    except RuntimeError as exc:
        reasons.append(f"extension unavailable: {exc}")
    return reasons
