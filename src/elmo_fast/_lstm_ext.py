"""The CUDA extension elmo_fast._lstm_cuda: find it, JIT-build it, load it, say what state it is in
(after xformers' `_cpp_lib.py`). Nothing here launches a kernel (that is `elmo_fast.lstm_cuda`).

The extension takes raw pointers and a stream and does not link libtorch. It comes from
`pip install -e .` on a machine with nvcc, or is JIT-built on first use into
$ELMO_FAST_CACHE/ext (default ~/.cache/elmo_fast/ext) when nvcc is found (ELMO_FAST_JIT=0 disables).
A failed load or build is recorded: later calls raise the same error at once instead of running
nvcc again (a new process tries again).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import _config

_lock = threading.Lock()
_ext = None
_ext_error: Optional[str] = None
_ext_origin: Optional[str] = None
HOW = "build it with `pip install -e .` on a machine with nvcc (ELMO_FAST_BUILD_CUDA=1 to require it)"


def csrc_dir() -> Optional[Path]:
    """The CUDA sources: elmo_fast/csrc when installed, <repo>/csrc for an editable install."""
    here = Path(__file__).resolve().parent
    for cand in (here / "csrc", here.parents[1] / "csrc"):
        if (cand / "lstm_persistent.cu").is_file() and (cand / "nvcc_build.py").is_file():
            return cand
    return None


def nvcc_build_module(src: Path):
    """csrc/nvcc_build.py, loaded by path (it ships beside the sources, outside the package)."""
    spec = importlib.util.spec_from_file_location("_elmo_fast_nvcc_build", src / "nvcc_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cache_dir() -> Path:
    return Path(_config.cache_root("ext"))


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
    nb = nvcc_build_module(src)
    arch_list = nb.arch_list(archs)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / _jit_key(src, arch_list)
    so = out_dir / f"_lstm_cuda{nb.ext_suffix()}"
    if not so.exists():
        tmp = out_dir / f"tmp-{os.getpid()}"
        built = nb.build(tmp / so.name, tmp / "obj", archs=arch_list, src_dir=src,
                         log=log or (lambda s: None))
        os.replace(built, so)  # atomic: a concurrent process sees a whole file or none
    return so


def import_from(path: Path):
    """The extension module from a .so file."""
    spec = importlib.util.spec_from_file_location("elmo_fast._lstm_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_prebuilt():
    return importlib.import_module("elmo_fast._lstm_cuda")


def load_extension(jit: bool = True):
    """The extension module; JIT-builds it when missing (nvcc needed). Raises RuntimeError, and
    after one failure raises the recorded error at once (no second nvcc run in this process)."""
    global _ext, _ext_error, _ext_origin
    with _lock:
        if _ext is not None:
            return _ext
        if _ext_error is not None:
            raise RuntimeError(_ext_error)
        try:
            _ext = _import_prebuilt()
            _ext_origin = f"prebuilt at {_ext.__file__}"
            return _ext
        except ImportError as exc:
            prebuilt_error = f"{type(exc).__name__}: {exc}"
        if not jit or not _config.jit_enabled():
            _ext_error = f"not built ({prebuilt_error}); JIT build disabled"
            raise RuntimeError(_ext_error)
        try:
            warnings.warn("elmo_fast: JIT-building the CUDA LSTM extension with nvcc (once, ~30 s)",
                          stacklevel=2)
            so = build_extension()
            _ext = import_from(so)
            _ext_origin = f"JIT-built at {so}"
            return _ext
        except Exception as exc:
            why = " ".join(str(exc).split())
            _ext_error = f"not built ({prebuilt_error}) and the JIT build failed: {why}"
            raise RuntimeError(_ext_error) from exc


def _build_info(module) -> Dict[str, Any]:
    try:
        return {str(k): v for k, v in dict(module.build_info()).items()}
    except Exception as exc:  # an old build without build_info, or a broken one
        return {"build_info_error": f"{type(exc).__name__}: {exc}"}


def extension_info() -> Dict[str, Any]:
    """The extension's state for `elmo-fast info` and the benchmark records. Never compiles.

    available: bool; state: 'built' | 'failed' | 'not built'; origin: where the module is;
    build: the module's build_info() (arch, CUDA runtime, ...); detail: one line; how: how to get it.
    """
    if _ext is not None:
        return {"available": True, "state": "built", "origin": _ext_origin, "build": _build_info(_ext)}
    if _ext_error is not None:
        return {"available": False, "state": "failed", "detail": _ext_error, "how": HOW}
    try:
        spec = importlib.util.find_spec("elmo_fast._lstm_cuda")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        try:
            module = _import_prebuilt()
        except ImportError as exc:
            return {"available": False, "state": "failed", "origin": spec.origin,
                    "detail": f"present at {spec.origin} but fails to import ({exc})",
                    "how": "rebuild with `pip install -e .`"}
        return {"available": True, "state": "built", "origin": f"prebuilt at {module.__file__}",
                "build": _build_info(module)}
    src = csrc_dir()
    if src is None:
        return {"available": False, "state": "not built", "detail": "sources not shipped", "how": HOW}
    nvcc = nvcc_build_module(src).find_nvcc()
    if nvcc and _config.jit_enabled():
        return {"available": False, "state": "not built", "how": HOW,
                "detail": f"will be JIT-built on first use with {nvcc} into {cache_dir()}"}
    return {"available": False, "state": "not built", "how": HOW,
            "detail": "no nvcc for a JIT build" if not nvcc else "JIT build disabled (ELMO_FAST_JIT=0)"}


def extension_status() -> str:
    """`extension_info` as one line: 'built (where; arch .., CUDA runtime ..)', else why not and how."""
    info = extension_info()
    if info["state"] == "built":
        b = info.get("build", {})
        facts = [info["origin"]]
        if "arch" in b:
            facts.append(f"arch {b['arch']}")
        if "cudart_version" in b:
            facts.append(f"CUDA runtime {b['cudart_version']}")
        facts += [f"{k} {v}" for k, v in b.items() if k not in ("arch", "cudart_version")]
        return f"built ({'; '.join(facts)})"
    return f"{info['state']}: {info.get('detail', '')}; {info['how']}"
