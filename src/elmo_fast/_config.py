"""Run-time configuration read from the environment, in one place: every variable elmo_fast reads
is read by a function here.

ELMO_FAST_BACKEND        auto | cuda | triton | torch: the default op backend (default auto);
                         `elmo_fast.ops.use_backend` and per-call / per-module choices override it
TRITON_INTERPRET         1 = Triton kernels run on the CPU (tests)
ELMO_FAST_CACHE          root of the caches: models/, ext/, bench/ (default $XDG_CACHE_HOME/elmo_fast,
                         i.e. ~/.cache/elmo_fast)
ELMO_FAST_JIT            0 = never compile the CUDA extension on first use
ELMO_FAST_WORKSPACE_MB   scratch budget that sets the time / token chunk sizes (default 1024)
ELMO_FAST_MODEL_BASE_URL mirror for the model registry's files (model_base_url)
ELMO_FAST_FIXTURES       the ELMo test fixture folder (tests, benchmarks; default ../shared/fixtures/elmo)
ELMO_FAST_BENCH_CACHE    where the benchmarks cache their random-weight models
                         (default $ELMO_FAST_CACHE/bench)
ELMO_ALLENNLP_TOOL       the benchmarks' allennlp loader (allennlp_elmo.py); ELMO_ALLENNLP_WHEEL its wheel
ELMO_FAST_SHARED         a shared/ folder holding fixtures/elmo and tools/ (benchmarks; path_setting)
ELMO_FAST_RAY_TEST_EXIT  K:DIR, a test hook: the first Ray worker to reach its K-th batch records
                         DIR/ray-worker-exit and ends its process (ray_test_exit(), read by ray.py)

Read at build time, where the package cannot be imported (listed so there is one place to look):
ELMO_FAST_BUILD_CUDA     0 = skip the CUDA extension, 1 = require it, unset = build if nvcc exists (setup.py)
ELMO_FAST_CUDA_ARCH      SM architectures for the extension, default 90 (setup.py, csrc/nvcc_build.py)
CUDA_HOME / CUDA_PATH    where nvcc is (csrc/nvcc_build.py)
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

BACKENDS = ("auto", "cuda", "triton", "torch")
DEFAULT_WORKSPACE_MB = 1024


def check_backend(value: str, source: str = "ELMO_FAST_BACKEND") -> str:
    """A backend name, normalised; ValueError naming `source` when it is not one of BACKENDS."""
    name = str(value).strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{source}={value!r} is not one of {', '.join(BACKENDS)}")
    return name


def backend_override() -> str:
    """The default backend from ELMO_FAST_BACKEND, or 'auto'."""
    return check_backend(os.environ.get("ELMO_FAST_BACKEND", "auto"))


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


def jit_enabled() -> bool:
    """False when ELMO_FAST_JIT=0: the CUDA extension is never compiled on first use."""
    return os.environ.get("ELMO_FAST_JIT", "1").strip() != "0"


def workspace_bytes() -> int:
    """The scratch budget (bytes) that sets chunk sizes: ELMO_FAST_WORKSPACE_MB, default 1024 MiB."""
    value = os.environ.get("ELMO_FAST_WORKSPACE_MB", "").strip()
    if not value:
        return DEFAULT_WORKSPACE_MB << 20
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if mb <= 0:
        raise ValueError(f"ELMO_FAST_WORKSPACE_MB={value!r} must be a positive number of MiB")
    return int(mb * (1 << 20))


def model_base_url(default: str) -> str:
    """ELMO_FAST_MODEL_BASE_URL (a mirror of the model files), else `default`; no trailing '/'."""
    return (os.environ.get("ELMO_FAST_MODEL_BASE_URL") or default).rstrip("/")


def fixtures_dir(default: str) -> str:
    """ELMO_FAST_FIXTURES, else `default` (tests and benchmarks: the ELMo fixture folder)."""
    return os.environ.get("ELMO_FAST_FIXTURES") or str(default)


def bench_cache() -> str:
    """ELMO_FAST_BENCH_CACHE, else $ELMO_FAST_CACHE/bench."""
    return os.environ.get("ELMO_FAST_BENCH_CACHE") or cache_root("bench")


def allennlp_tool() -> Optional[str]:
    """ELMO_ALLENNLP_TOOL: path of the benchmarks' allennlp loader, or None."""
    return os.environ.get("ELMO_ALLENNLP_TOOL") or None


def allennlp_wheel() -> Optional[str]:
    """ELMO_ALLENNLP_WHEEL: path of the allennlp 0.9 wheel the loader installs, or None."""
    return os.environ.get("ELMO_ALLENNLP_WHEEL") or None


def raw(names: Sequence[str]) -> Dict[str, Optional[str]]:
    """The variables' values as set (None when unset), for reports such as `elmo-fast info`."""
    return {name: os.environ.get(name) for name in names}


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
