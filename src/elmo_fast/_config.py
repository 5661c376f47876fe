"""Run-time configuration read from the environment, in one place.

ELMO_FAST_BACKEND = auto | cuda | triton | torch   forces an op backend (default: auto)
TRITON_INTERPRET  = 1                              Triton kernels run on the CPU (tests)

Read elsewhere, listed here so there is one place to look:
ELMO_FAST_CACHE          root of the caches: models/, ext/, bench/ (default $XDG_CACHE_HOME/elmo_fast,
                         i.e. ~/.cache/elmo_fast)
ELMO_FAST_MODEL_BASE_URL mirror for the model registry's files             (download.py)
ELMO_FAST_BUILD_CUDA     0 = skip the CUDA extension, 1 = require it, unset = build if nvcc exists
ELMO_FAST_CUDA_ARCH      SM architectures for the extension (default 90)   (setup.py, csrc/nvcc_build.py)
ELMO_FAST_JIT            0 = never compile the extension on first use      (lstm_cuda.py)
ELMO_FAST_RAY_TEST_EXIT  K:DIR, a test hook: the first Ray worker to reach its K-th batch records
                         DIR/ray-worker-exit and ends its process (ray_test_exit(), read by ray.py)
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

BACKENDS = ("auto", "cuda", "triton", "torch")


def backend_override() -> str:
    """The backend the user forced with ELMO_FAST_BACKEND, or 'auto'."""
    value = os.environ.get("ELMO_FAST_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"ELMO_FAST_BACKEND={value!r} is not one of {', '.join(BACKENDS)}"
        )
    return value


def cache_root(sub: str) -> str:
    """A folder under elmo_fast's cache root: $ELMO_FAST_CACHE/sub, else
    ${XDG_CACHE_HOME:-~/.cache}/elmo_fast/sub (models, ext, bench)."""
    root = os.environ.get("ELMO_FAST_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        root = os.path.join(xdg, "elmo_fast")
    return os.path.join(os.path.expanduser(root), sub)


def ray_test_exit() -> Optional[Tuple[int, str]]:
    """ELMO_FAST_RAY_TEST_EXIT=K:DIR as (K, DIR), or None when unset (the fault tests' hook)."""
    value = os.environ.get("ELMO_FAST_RAY_TEST_EXIT", "").strip()
    if not value:
        return None
    k, sep, folder = value.partition(":")
    if not sep or not k.isdigit() or int(k) < 1 or not os.path.isdir(folder):
        raise ValueError(f"ELMO_FAST_RAY_TEST_EXIT={value!r} must be K:DIR (K >= 1, DIR an existing folder)")
    return int(k), os.path.abspath(folder)  # the workers' working folder is not ours


def triton_interpret() -> bool:
    """True when Triton kernels are to run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
