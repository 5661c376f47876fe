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


def cache_root(sub: str) -> str:
    """A folder under elmo_fast's cache root: $ELMO_FAST_CACHE/sub, else
    ${XDG_CACHE_HOME:-~/.cache}/elmo_fast/sub (models, ext, bench)."""
    root = os.environ.get("ELMO_FAST_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        root = os.path.join(xdg, "elmo_fast")
    return os.path.join(os.path.expanduser(root), sub)


def triton_interpret() -> bool:
    """True when Triton kernels are to run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Paths the benchmarks (elmo_fast.bench) look in first; elmo_fast.bench.inputs says where else:
#   ELMO_FAST_SHARED      a shared/ folder holding fixtures/elmo and tools/ (default: a shared/ beside
#                         or above the working directory or the installed package)
#   ELMO_FAST_FIXTURES    the ELMo fixture folder itself (sentences.json, vocab_test.txt, ...)
#   ELMO_FAST_BENCH_CACHE the bench's random-weight models (default: cache_root("bench"))
#   ELMO_ALLENNLP_TOOL    allennlp_elmo.py, the loader of allennlp 0.9's Elmo (default: shared/tools)
#   ELMO_ALLENNLP_WHEEL   the allennlp 0.9.0 wheel that tool reads
PATH_SETTINGS = ("ELMO_FAST_SHARED", "ELMO_FAST_FIXTURES", "ELMO_FAST_BENCH_CACHE", "ELMO_ALLENNLP_TOOL",
                 "ELMO_ALLENNLP_WHEEL")


def path_setting(name: str):
    """The path a PATH_SETTINGS variable names (user-expanded), or None when it is unset or empty."""
    if name not in PATH_SETTINGS:
        raise KeyError(f"{name} is not one of {', '.join(PATH_SETTINGS)}")
    value = os.environ.get(name, "").strip()
    return os.path.expanduser(value) if value else None
