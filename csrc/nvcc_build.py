"""Compiles elmo_fast._lstm_cuda with nvcc alone (no libtorch, no setuptools machinery).

Used by setup.py (build_ext) and by elmo_fast.lstm_cuda's JIT build; ships beside the sources.
Only the standard library, pybind11 and nvcc are needed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence

HERE = Path(__file__).resolve().parent
SOURCES = ("lstm_persistent.cu", "module.cpp")
HEADERS = ("lstm_persistent.cuh", "lstm_persistent.h")
DEFAULT_ARCH = "90"


def find_nvcc() -> Optional[str]:
    """nvcc from $CUDA_HOME/bin, then PATH, then /usr/local/cuda/bin."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    fallback = Path("/usr/local/cuda/bin/nvcc")
    return str(fallback) if fallback.is_file() else None


def arch_list(spec: Optional[str] = None) -> List[str]:
    """'90' -> ['90']; '80;90a' or '80,90a' -> ['80', '90a'] (ELMO_FAST_CUDA_ARCH)."""
    spec = spec or os.environ.get("ELMO_FAST_CUDA_ARCH") or DEFAULT_ARCH
    archs = [a.strip().replace("sm_", "").replace("compute_", "").replace(".", "")
             for a in spec.replace(",", ";").split(";")]
    archs = [a for a in archs if a]
    if not archs or not all(a[:-1].isdigit() if a.endswith("a") else a.isdigit() for a in archs):
        raise ValueError(f"ELMO_FAST_CUDA_ARCH={spec!r}: expected e.g. '90' or '80;90'")
    return archs


def gencode_flags(archs: Sequence[str]) -> List[str]:
    """Machine code for every arch, plus PTX of the last one (JIT-compiled by newer drivers)."""
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def ext_suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def include_dirs() -> List[str]:
    import pybind11  # build requirement

    return [pybind11.get_include(), sysconfig.get_paths()["include"]]


def commands(out_path: Path, build_dir: Path, archs: Sequence[str], nvcc: str, src_dir: Path = HERE,
             extra: Sequence[str] = ()) -> List[List[str]]:
    """[compile .cu, compile .cpp, link]: the first two may run in parallel."""
    arch_str = ";".join(archs)
    inc = [f"-I{d}" for d in include_dirs()] + [f"-I{src_dir}"]
    common = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden", *inc, *extra]
    cu_obj, cpp_obj = build_dir / "lstm_persistent.o", build_dir / "module.o"
    return [
        [nvcc, "-c", str(src_dir / "lstm_persistent.cu"), "-o", str(cu_obj), *common, *gencode_flags(archs),
         "-lineinfo", f'-DELMO_FAST_CUDA_ARCH_STR="{arch_str}"'],
        [nvcc, "-c", str(src_dir / "module.cpp"), "-o", str(cpp_obj), *common],
        [nvcc, "-shared", str(cu_obj), str(cpp_obj), "-o", str(out_path), "-cudart", "static",
         *gencode_flags(archs)],
    ]


def build(out_path: Path, build_dir: Path, archs: Optional[Sequence[str]] = None, nvcc: Optional[str] = None,
          src_dir: Path = HERE, extra: Sequence[str] = (), log=print) -> Path:
    """Compiles and links the module to out_path. Raises RuntimeError with nvcc's output on failure."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    archs = list(archs or arch_list())
    out_path, build_dir = Path(out_path), Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cu, cpp, link = commands(out_path, build_dir, archs, nvcc, Path(src_dir), extra)

    def run(cmd):
        log(" ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed ({proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(run, [cu, cpp]))
    for text in outputs:
        if text.strip():
            log(text.strip())
    run(link)
    return out_path


if __name__ == "__main__":  # python csrc/nvcc_build.py OUT_DIR [extra nvcc flags...]
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "build/_lstm_cuda")
    build(out_dir / f"_lstm_cuda{ext_suffix()}", out_dir / "obj", extra=sys.argv[2:])
