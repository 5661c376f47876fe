"""Backend dispatch with reasons (after xformers' fmha dispatch).

Each op lists its backends fastest first. A backend declares what it supports (a `Support` from
`elmo_fast._support`, next to its launcher) and so can say why it cannot run a given call; the
dispatcher takes the first with no reasons, or the one chosen, and can explain every choice
(`elmo-fast info`).

Choosing a backend, strongest first:
  per call      op(..., backend="triton")
  per module    BiLm(..., backend="triton") / Elmo(..., backend=...) (wraps its forward in use_backend)
  in a block    with elmo_fast.ops.use_backend("triton"): ...   (per thread / async task: a contextvar)
  default       ELMO_FAST_BACKEND=auto|cuda|triton|torch
A chosen backend that cannot run the call raises BackendUnavailable with the reasons; an op that has
no backend of that name runs its automatic choice (or, for an op built from other ops, the composite,
so the inner ops see the choice).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .. import _config
from .._support import ANY, Support, op_label, tensors_of  # noqa: F401  (tensors_of: re-exported for callers)

_UNDECLARED = Support(devices=ANY, dtypes=ANY)


class BackendUnavailable(RuntimeError):
    """A chosen backend cannot run this call; the message lists why."""


# (name, where the choice came from) set by use_backend; None: the ELMO_FAST_BACKEND default
_CHOICE: contextvars.ContextVar[Optional[Tuple[str, str]]] = contextvars.ContextVar("elmo_fast_backend",
                                                                                     default=None)
# {op name: backend name} recorders opened by record_backends
_RECORDERS: contextvars.ContextVar[Tuple[Dict[str, str], ...]] = contextvars.ContextVar("elmo_fast_record",
                                                                                        default=())


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[Optional[str]]:
    """Runs the block with backend `name` ('auto' | 'cuda' | 'triton' | 'torch') for every op call
    that does not choose its own; None leaves the current choice. Nests; per thread and async task.

        with elmo_fast.ops.use_backend("torch"):
            out = elmo(ids)            # the reference path, whatever ELMO_FAST_BACKEND says
    """
    if name is None:
        yield None
        return
    checked = _config.check_backend(name, source="use_backend")
    token = _CHOICE.set((checked, f"use_backend({checked!r})"))
    try:
        yield checked
    finally:
        _CHOICE.reset(token)


def current_backend() -> Tuple[str, str]:
    """(backend name, where the choice comes from) in effect here: use_backend, else ELMO_FAST_BACKEND."""
    choice = _CHOICE.get()
    if choice is not None:
        return choice
    return _config.backend_override(), "ELMO_FAST_BACKEND"


# torch.compile reads the choice once, while tracing (a host-side setting, like a flag); set as
# torch._dynamo.assume_constant_result does, without importing dynamo (seconds) with elmo_fast
current_backend._dynamo_marked_constant = True


@contextlib.contextmanager
def record_backends(seen: Optional[Dict[str, str]] = None) -> Iterator[Dict[str, str]]:
    """Collects {op name: backend name} of every op call in the block (the last call of each op)."""
    seen = {} if seen is None else seen
    token = _RECORDERS.set(_RECORDERS.get() + (seen,))
    try:
        yield seen
    finally:
        _RECORDERS.reset(token)


def record_choice(op: str, backend: str) -> None:
    """Tells the open record_backends blocks that `op` ran `backend` (eager calls only: a compiled
    graph has no per-call choice)."""
    for seen in (() if torch.compiler.is_compiling() else _RECORDERS.get()):
        seen[op] = backend


@dataclass
class Backend:
    """One implementation of an op.

    name:      'cuda' | 'triton' | 'torch'
    target:    'module:function' imported on first use (so a missing triton or extension only
               disables this backend, with the import error as the reason)
    support:   what it runs: a `Support`, or 'module:attr' naming one (imported with the target, so
               the declaration lives beside the launcher it describes); or a callable
               support(inputs, forced) -> reasons. None: any device and dtype, no backward pass
    composite: the backend is built from other ops (which apply the backend choice themselves): it
               runs when the chosen backend is not one of this op's own
    """

    name: str
    target: str
    support: Any = None
    composite: bool = False
    _fn: Optional[Callable] = field(default=None, repr=False)
    _import_error: Optional[str] = field(default=None, repr=False)

    def __post_init__(self):
        # the pure-PyTorch backends are loaded now (cheap, always there), so a torch.compile trace
        # through the dispatcher meets no import
        if self.target.startswith(("elmo_fast.reference.", "elmo_fast.ops.")):
            self.load()

    def load(self) -> Optional[Callable]:
        if self._fn is None and self._import_error is None:
            module, _, attr = self.target.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
                if isinstance(self.support, str):
                    smod, _, sattr = self.support.partition(":")
                    self.support = getattr(importlib.import_module(smod), sattr)
                self._fn = fn
            except Exception as exc:  # ImportError, or a broken build of an extension
                self._import_error = f"{module} could not be imported ({type(exc).__name__}: {exc})"
        return self._fn

    def reasons(self, inputs: Dict[str, Any], forced: bool) -> List[str]:
        """Why this backend cannot run the call ([] = it can)."""
        if self.load() is None:
            return [self._import_error]
        if self.support is None:
            return _UNDECLARED.not_supported_reasons(inputs, forced)
        if isinstance(self.support, Support):
            return self.support.not_supported_reasons(inputs, forced)
        return list(self.support(inputs, forced))


class Op:
    """A public op: a name and its backends, fastest first (the last is the torch reference).

    example: example(shapes, device, dtype) -> inputs of a call with a real model's shapes
             (`elmo-fast info` asks every backend about it); shapes as `synthetic.model_shapes`.
    """

    def __init__(self, name: str, backends: Sequence[Backend], example: Optional[Callable] = None):
        self.name = name
        self.backends = list(backends)
        self.example = example

    def explain(self, backend: Optional[str] = None, **inputs) -> List[Tuple[str, List[str]]]:
        """[(backend, reasons it cannot run)] for every backend, in preference order."""
        forced = self._choice(backend)[0]
        return [(b.name, b.reasons(inputs, forced == b.name)) for b in self.backends]

    def _choice(self, backend: Optional[str]) -> Tuple[str, str]:
        if backend is not None:
            name = _config.check_backend(backend, source="backend")
            return name, f"backend={name!r}"
        return current_backend()

    def select(self, backend: Optional[str] = None, **inputs) -> Backend:
        """The backend that runs this call: the chosen one (BackendUnavailable if it cannot), else
        the first that can."""
        forced, source = self._choice(backend)
        if forced != "auto":
            for b in self.backends:
                if b.name == forced:
                    why = b.reasons(inputs, True)
                    if why:
                        source = f"ELMO_FAST_BACKEND={forced}" if source == "ELMO_FAST_BACKEND" else source
                        raise BackendUnavailable(f"{source} but {self.name} cannot run on it: "
                                                 + "; ".join(why))
                    return b
            # This op has no backend of that name: an op built from other ops passes the choice
            # on through its composite backend; any other op makes the automatic choice.
            for b in self.backends:
                if b.composite and not b.reasons(inputs, False):
                    return b
        for b in self.backends:
            if not b.reasons(inputs, False):
                return b
        raise BackendUnavailable(f"no backend can run {self.name}: {self.explain(**inputs)}")

    def __call__(self, backend: Optional[str] = None, **inputs):
        chosen = self.select(backend=backend, **inputs)
        record_choice(self.name, chosen.name)
        with op_label(self.name):
            if backend is not None and chosen.composite:
                with use_backend(backend):
                    return chosen.load()(**inputs)
            return chosen.load()(**inputs)


OPS: Dict[str, Op] = {}


def register(op: Op) -> Op:
    OPS[op.name] = op
    return op
