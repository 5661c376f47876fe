"""Backend dispatch with reasons (after xformers' fmha dispatch).

Each op lists its backends fastest first. A backend says why it cannot run a given call
(`not_supported_reasons`); the dispatcher takes the first with no reasons, or the one forced with
ELMO_FAST_BACKEND, and can explain every choice (`elmo-fast info`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import _config


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run this call; the message lists why."""


@dataclass
class Backend:
    """One implementation of an op.

    name:     'cuda' | 'triton' | 'torch'
    target:   'module:function' imported on first use (so a missing triton or extension only
              disables this backend, with the import error as the reason)
    check:    check(inputs, forced) -> list of reasons this backend cannot run the call; a
              callable, or a 'module:function' string imported with the target (so the rules
              live beside the launcher they describe)
    """

    name: str
    target: str
    check: Any = None
    _fn: Optional[Callable] = field(default=None, repr=False)
    _import_error: Optional[str] = field(default=None, repr=False)

    def load(self) -> Optional[Callable]:
        if self._fn is None and self._import_error is None:
            module, _, attr = self.target.partition(":")
            try:
                self._fn = getattr(importlib.import_module(module), attr)
                if isinstance(self.check, str):
                    cmod, _, cattr = self.check.partition(":")
                    self.check = getattr(importlib.import_module(cmod), cattr)
            except Exception as exc:  # ImportError, or a broken build of an extension
                self._import_error = f"{module} could not be imported ({type(exc).__name__}: {exc})"
        return self._fn

    def reasons(self, inputs: Dict[str, Any], forced: bool) -> List[str]:
        if self.load() is None:
            return [self._import_error]
        why = list(self.check(inputs, forced)) if self.check is not None else []
        if self.name != "torch" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors_of(inputs)):
            why.append("inputs require grad and only the torch backend has a backward pass")
        return why


def tensors_of(inputs: Dict[str, Any]) -> List[torch.Tensor]:
    """Every tensor among the inputs, lists of tensors included."""
    out = []
    for v in inputs.values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(t for t in v if isinstance(t, torch.Tensor))
    return out


def device_reasons(inputs: Dict[str, Any], forced: bool, allow_interpreter: bool) -> List[str]:
    """Common device rule for GPU backends: CUDA tensors, or CPU tensors under TRITON_INTERPRET
    when the backend was forced (the interpreter is for tests, never an automatic choice)."""
    devices = {t.device.type for t in tensors_of(inputs)}
    if devices == {"cuda"}:
        return []
    if devices == {"cpu"} and allow_interpreter and _config.triton_interpret():
        return [] if forced else ["tensors are on the CPU (the Triton interpreter runs only when forced)"]
    if len(devices) > 1:
        return [f"tensors on several devices: {sorted(devices)}"]
    return [f"tensors are on {', '.join(sorted(devices)) or 'no device'}, not CUDA"]


class Op:
    """A public op: a name and its backends, fastest first (the last is the torch reference)."""

    def __init__(self, name: str, backends: Sequence[Backend]):
        self.name = name
        self.backends = list(backends)

    def explain(self, **inputs) -> List[Tuple[str, List[str]]]:
        """[(backend, reasons it cannot run)] for every backend, in preference order."""
        forced = _config.backend_override()
        return [(b.name, b.reasons(inputs, forced == b.name)) for b in self.backends]

    def select(self, **inputs) -> Backend:
        forced = _config.backend_override()
        if forced != "auto":
            for b in self.backends:
                if b.name == forced:
                    why = b.reasons(inputs, True)
                    if why:
                        raise BackendUnavailable(
                            f"ELMO_FAST_BACKEND={forced} but {self.name} cannot run on it: " + "; ".join(why)
                        )
                    return b
            # The forced backend does not implement this op: fall through to the automatic choice.
        for b in self.backends:
            if not b.reasons(inputs, False):
                return b
        raise BackendUnavailable(f"no backend can run {self.name}: {self.explain(**inputs)}")

    def __call__(self, **inputs):
        return self.select(**inputs).load()(**inputs)


OPS: Dict[str, Op] = {}


def register(op: Op) -> Op:
    OPS[op.name] = op
    return op
