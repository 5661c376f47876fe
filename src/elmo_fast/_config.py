"""Run-time configuration read from the environment, in one place.

ELMO_FAST_BACKEND = auto | cuda | triton | torch   forces an op backend (default: auto)
TRITON_INTERPRET  = 1                              Triton kernels run on the CPU (tests)
"""
from __future__ import annotations

import os

BACKENDS = ("auto", "cuda", "triton", "torch")


def backend_override() -> str:
    """The backend the user forced with ELMO_FAST_BACKEND, or 'auto'."""
    value = os.environ.get("ELMO_FAST_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"ELMO_FAST_BACKEND={value!r} is not one of {', '.join(BACKENDS)}"
        )
    return value


def triton_interpret() -> bool:
    """True when Triton kernels are to run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
