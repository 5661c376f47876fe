"""What a backend can run, declared once (after xformers' fmha `common.py`).

Each backend module (kernels/*.py, lstm_cuda.py, the references) declares a `Support`: the device
types and dtypes it runs, its size limits, whether it has a backward pass, and the op's argument
rule it relies on. One `Support.not_supported_reasons` derives every common check from that; a
backend adds only what is peculiar to it (`extra`). This module sits below both the backends and
the dispatcher (`elmo_fast.ops`): it imports neither, so they can both import it.

The argument rules of the ops (`lstm_sizes`, `bilstm_sizes`, `char_cnn_sizes`, `highway_sizes`)
live here too: each checks the structure of one call (tensor types, ranks, matching shapes, dtype
agreement), raises TypeError / ValueError naming the argument, and returns the sizes the limits
are checked against.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from . import _config

# Activations of the char CNN (options.json char_cnn.activation), in the kernels' numbering.
ACTIVATIONS: Dict[str, int] = {"relu": 0, "tanh": 1}
FLOAT_DTYPES: FrozenSet[torch.dtype] = frozenset({torch.float32, torch.bfloat16})
ANY = None  # Support(devices=ANY) / dtypes=ANY: no restriction

Inputs = Mapping[str, Any]


def tensors_of(inputs: Inputs) -> List[Tensor]:
    """Every tensor among the inputs, inside lists and tuples too (nested)."""
    out: List[Tensor] = []

    def walk(v):
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    for v in inputs.values():
        walk(v)
    return out


def op_label(name: str):
    """A torch.profiler label `elmo_fast::<name>` while a profiler runs (nothing otherwise, and nothing
    under torch.compile): how bench_cpu.py --profile attributes time to ops."""
    # is_compiling first: dynamo folds it, so a compiled graph never meets the profiler query
    if not torch.compiler.is_compiling() and torch.autograd._profiler_enabled():
        return torch.profiler.record_function(f"elmo_fast::{name}")
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Support:
    """What one backend of one op supports.

    devices:     device types it runs on ('cuda', 'cpu'), or ANY
    interpreter: CPU tensors are also accepted under TRITON_INTERPRET=1, but only when the backend
                 was chosen explicitly (the interpreter is for tests, never an automatic choice)
    dtypes:      floating dtypes of the call's main tensor (`dtype_of`), or ANY
    dtype_of:    name of that argument (e.g. 'xproj'); a list/tuple argument uses its first tensor
    rule:        the op's argument rule (one of the *_sizes functions below): sizes, or raises
    limits:      {size name: largest value} checked against the rule's sizes
    backward:    False: cannot run when an input requires grad (with grad mode on)
    extra:       extra(inputs, sizes) -> further reasons peculiar to this backend (called once the
                 rule has passed)
    """

    devices: Optional[FrozenSet[str]] = frozenset({"cuda"})
    interpreter: bool = False
    dtypes: Optional[FrozenSet[torch.dtype]] = FLOAT_DTYPES
    dtype_of: Optional[str] = None
    rule: Optional[Callable[[Inputs], Dict[str, int]]] = None
    limits: Mapping[str, int] = field(default_factory=dict)
    backward: bool = False
    extra: Optional[Callable[[Inputs, Dict[str, int]], Iterable[str]]] = None

    def not_supported_reasons(self, inputs: Inputs, forced: bool = False) -> List[str]:
        """Why this backend cannot run the call ([] = it can). Never raises for bad arguments."""
        tensors = tensors_of(inputs)
        why = self._device_reasons(tensors, forced)
        if self.dtypes is not None and self.dtype_of is not None:
            main = inputs.get(self.dtype_of)
            if isinstance(main, (list, tuple)):
                main = next((t for t in tensors_of({"x": main})), None)
            if isinstance(main, Tensor) and main.dtype not in self.dtypes:
                names = ", ".join(sorted(str(d).replace("torch.", "") for d in self.dtypes))
                why.append(f"{self.dtype_of} dtype {main.dtype} is not one of {names}")
        sizes: Dict[str, int] = {}
        if self.rule is not None:
            try:
                sizes = self.rule(inputs)
            except (TypeError, ValueError) as exc:
                return why + [str(exc)]
        for name, top in self.limits.items():
            if name in sizes and sizes[name] > top:
                why.append(f"{name}={sizes[name]} is over this backend's limit {top}")
        if not self.backward and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            why.append("inputs require grad and this backend has no backward pass")
        if self.extra is not None:
            why.extend(self.extra(inputs, sizes))
        return why

    def _device_reasons(self, tensors: Sequence[Tensor], forced: bool) -> List[str]:
        devices = {t.device.type for t in tensors}
        if len(devices) > 1:
            return [f"tensors on several devices: {sorted(devices)}"]
        if self.devices is None or devices <= self.devices:
            return []
        if devices == {"cpu"} and self.interpreter and _config.triton_interpret():
            return [] if forced else ["tensors are on the CPU (the Triton interpreter runs only when forced)"]
        allowed = " or ".join(sorted(self.devices)).upper() if self.devices else "none"
        return [f"tensors are on {', '.join(sorted(devices)) or 'no device'}, not {allowed}"]


# The torch reference runs anything, with autograd.
REFERENCE = Support(devices=ANY, dtypes=ANY, backward=True)


# ------------------------------------------------------------------------------------------------
# Argument rules of the ops
# ------------------------------------------------------------------------------------------------
def _need(inputs: Inputs, dims: Mapping[str, int]) -> Dict[str, Tensor]:
    got = {}
    for name, nd in dims.items():
        t = inputs.get(name)
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != nd:
            raise ValueError(f"{name} must have {nd} dimensions, got shape {tuple(t.shape)}")
        got[name] = t
    return got


def _check_clips(inputs: Inputs) -> None:
    for name in ("cell_clip", "proj_clip"):
        v = inputs.get(name)
        if v is not None and not (isinstance(v, (int, float)) and float(v) >= 0.0):
            raise ValueError(f"{name} must be None or a number >= 0, got {v!r}")


def lstm_sizes(inputs: Inputs) -> Dict[str, int]:
    """The fast LSTM kernels' contract for `lstm_layer(xproj, w_hh, w_p, lengths, h0, c0, ...)`:
    xproj [B, T, 4C] float, w_hh [4C, P] and w_p [P, C] of xproj's dtype, lengths [B] int32/int64,
    h0 [B, P] and c0 [B, C] float32 or xproj's dtype. -> dict(B, T, C, P)."""
    t = _need(inputs, dict(xproj=3, w_hh=2, w_p=2, lengths=1, h0=2, c0=2))
    xproj = t["xproj"]
    B, T, G = xproj.shape
    if G % 4:
        raise ValueError(f"xproj's last dimension must be 4*C (gates i, f, g, o), got {G}")
    C, P = G // 4, t["w_hh"].shape[1]
    expect = dict(w_hh=(4 * C, P), w_p=(P, C), lengths=(B,), h0=(B, P), c0=(B, C))
    for name, shape in expect.items():
        if tuple(t[name].shape) != shape:
            raise ValueError(f"shapes disagree: {name} must have shape {shape} (B={B}, C={C}, P={P}), "
                             f"got {tuple(t[name].shape)}")
    if not xproj.is_floating_point():
        raise TypeError(f"xproj must be a floating tensor, got {xproj.dtype}")
    for name in ("w_hh", "w_p"):
        if t[name].dtype != xproj.dtype:
            raise TypeError(f"{name} must have xproj's dtype {xproj.dtype}, got {t[name].dtype}")
    for name in ("h0", "c0"):
        if t[name].dtype not in (torch.float32, xproj.dtype):
            raise TypeError(f"{name} must be float32 or {xproj.dtype}, got {t[name].dtype}")
    if t["lengths"].dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths must be int32 or int64, got {t['lengths'].dtype}")
    _check_clips(inputs)
    return dict(B=B, T=T, C=C, P=P)


def bilstm_sizes(inputs: Inputs) -> Dict[str, int]:
    """The contract of `bilstm_layer(x, weights, lengths, h0, c0, ...)`: x a pair of [B, T, D]
    (forward, backward input), weights a pair of (w_ih [4C, D], bias [4C], w_hh [4C, P], w_p [P, C])
    of x's dtype, lengths [B] int, h0 [B, 2P], c0 [B, 2C]. -> dict(B, T, D, C, P)."""
    x, weights = inputs.get("x"), inputs.get("weights")
    if not (isinstance(x, (list, tuple)) and len(x) == 2):
        raise TypeError("x must be a pair (forward input, backward input) of [B, T, D] tensors")
    if not (isinstance(weights, (list, tuple)) and len(weights) == 2 and all(len(w) == 4 for w in weights)):
        raise TypeError("weights must be a pair of (w_ih, bias, w_hh, w_p), one per direction")
    for d, name in enumerate(("forward", "backward")):
        w_ih, bias, w_hh, w_p = weights[d]
        t = _need(dict(x=x[d], w_ih=w_ih, bias=bias), dict(x=3, w_ih=2, bias=1))
        B, T, D = t["x"].shape
        G = w_ih.shape[0]
        if w_ih.shape[1] != D:
            raise ValueError(f"{name} w_ih must have shape [4C, {D}], got {tuple(w_ih.shape)}")
        if tuple(bias.shape) != (G,):
            raise ValueError(f"{name} bias must have shape ({G},), got {tuple(bias.shape)}")
        for name2, w in (("w_ih", w_ih), ("bias", bias)):
            if w.dtype != x[d].dtype:
                raise TypeError(f"{name} {name2} must have x's dtype {x[d].dtype}, got {w.dtype}")
        h0, c0 = inputs.get("h0"), inputs.get("c0")
        if not (isinstance(h0, Tensor) and isinstance(c0, Tensor) and h0.dim() == 2 and c0.dim() == 2):
            raise TypeError("h0 [B, 2P] and c0 [B, 2C] must be 2-d tensors")
        P, C = h0.shape[1] // 2, c0.shape[1] // 2
        sizes = lstm_sizes(dict(xproj=x[d].new_empty(()).expand(B, T, G), w_hh=w_hh, w_p=w_p,
                                lengths=inputs.get("lengths"), h0=h0[:, :P], c0=c0[:, :C],
                                cell_clip=inputs.get("cell_clip"), proj_clip=inputs.get("proj_clip")))
        if h0.shape[1] != 2 * sizes["P"] or c0.shape[1] != 2 * sizes["C"]:
            raise ValueError(f"h0 must be [B, {2 * sizes['P']}] and c0 [B, {2 * sizes['C']}] "
                             "(both directions), "
                             f"got {tuple(h0.shape)} and {tuple(c0.shape)}")
        if d == 0:
            first = dict(sizes, D=D)
        elif dict(sizes, D=D) != first:
            raise ValueError(f"the two directions' shapes differ: {first} and {dict(sizes, D=D)}")
    return first


def char_cnn_sizes(inputs: Inputs) -> Dict[str, int]:
    """`char_cnn(chars [N, L] int, char_embed [V, E], conv_weights [w_k, E, n_k]..., conv_biases
    [n_k]..., activation)`. -> dict(N, L, V, E, width (the widest), filters (their total))."""
    t = _need(inputs, dict(chars=2, char_embed=2))
    chars, emb = t["chars"], t["char_embed"]
    errors = []
    if chars.dtype not in (torch.int64, torch.int32, torch.int16):
        errors.append(f"chars dtype {chars.dtype} is not an integer type")
    weights, biases = list(inputs.get("conv_weights") or []), list(inputs.get("conv_biases") or [])
    if not weights or len(weights) != len(biases):
        raise ValueError("; ".join(errors + ["need one bias per convolution and at least one convolution"]))
    E, L = emb.shape[1], chars.shape[1]
    for k, (w, b) in enumerate(zip(weights, biases)):
        if not isinstance(w, Tensor) or w.dim() != 3 or w.shape[1] != E:
            errors.append(f"conv_weights[{k}] shape {tuple(getattr(w, 'shape', ()))} is not [w, {E}, n]")
            continue
        if not 1 <= w.shape[0] <= L:
            errors.append(f"conv_weights[{k}] width {w.shape[0]} outside 1..{L}")
        if not isinstance(b, Tensor) or tuple(b.shape) != (w.shape[2],):
            errors.append(f"conv_biases[{k}] shape {tuple(getattr(b, 'shape', ()))} != ({w.shape[2]},)")
        if w.dtype != emb.dtype:
            errors.append(f"conv_weights[{k}] dtype {w.dtype} != char_embed dtype {emb.dtype}")
    if inputs.get("activation", "relu") not in ACTIVATIONS:
        errors.append(f"activation {inputs.get('activation')!r} not in {tuple(ACTIVATIONS)}")
    if errors:
        raise ValueError("; ".join(errors))
    return dict(N=chars.shape[0], L=L, V=emb.shape[0], E=E, width=max(int(w.shape[0]) for w in weights),
                filters=sum(int(w.shape[2]) for w in weights))


def highway_sizes(inputs: Inputs) -> Dict[str, int]:
    """`highway(x [N, D], layers [(w_carry [D, D], b_carry [D], w_transform [D, D], b_transform
    [D])...], w_proj [D, P], b_proj [P])`, every tensor of x's dtype. -> dict(N, D, P, layers)."""
    t = _need(inputs, dict(x=2, w_proj=2, b_proj=1))
    x, w_proj, b_proj = t["x"], t["w_proj"], t["b_proj"]
    N, D = x.shape
    layers = list(inputs.get("layers") or [])
    errors = []
    for i, layer in enumerate(layers):
        if len(layer) != 4:
            errors.append(f"layers[{i}] has {len(layer)} tensors, not 4")
            continue
        wc, bc, wt, bt = layer
        if wc.shape != (D, D) or wt.shape != (D, D) or bc.shape != (D,) or bt.shape != (D,):
            errors.append(f"layers[{i}] shapes do not match D={D}")
        if any(p.dtype != x.dtype for p in layer):
            errors.append(f"layers[{i}] dtypes differ from x dtype {x.dtype}")
    if w_proj.shape[0] != D:
        errors.append(f"w_proj shape {tuple(w_proj.shape)} is not [{D}, P]")
    if w_proj.dtype != x.dtype or b_proj.dtype != x.dtype:
        errors.append(f"w_proj/b_proj dtypes {w_proj.dtype}/{b_proj.dtype} != x dtype {x.dtype}")
    if b_proj.shape != w_proj.shape[-1:]:
        errors.append(f"b_proj shape {tuple(b_proj.shape)} != ({w_proj.shape[-1]},)")
    if errors:
        raise ValueError("; ".join(errors))
    return dict(N=N, D=D, P=int(w_proj.shape[1]), layers=len(layers))


# ------------------------------------------------------------------------------------------------
# Memory: chunk sizes from a byte budget
# ------------------------------------------------------------------------------------------------
def chunk_len(bytes_per_item: int, budget: Optional[int] = None) -> int:
    """How many items (time steps, tokens) of `bytes_per_item` scratch fit in the workspace budget
    (_config.workspace_bytes(), ELMO_FAST_WORKSPACE_MB); at least 1."""
    budget = _config.workspace_bytes() if budget is None else budget
    return max(1, int(budget) // max(1, int(bytes_per_item)))


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """torch's intra-op threads set to 1 for the block, for work on the CPU (process-wide: use it only
    where no other thread runs torch work at the same time). For many small ops: the recurrence's
    element-wise work (a few [n, C] passes per step, tens of microseconds, ~10 per step) and the
    corpus job's dtype conversions. On a machine where another process holds a core, every OpenMP
    region waits for a descheduled worker: at 2 threads the cell update took 46x its 1-thread time
    (bench/NOTES.md #12). Serial, they lose at most the parallel speed-up of small passes. Setting
    the count costs ~0.2 us."""
    n = torch.get_num_threads()
    if n == 1 or device.type != "cpu":
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
