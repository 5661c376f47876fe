"""Build script: the Python package (src/elmo_fast + kernels/ as elmo_fast.kernels) and the
optional persistent-LSTM CUDA extension (see csrc/ and the CUDA section below)."""
import importlib.util
import os
import platform
import shutil
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# CUDA extension elmo_fast._lstm_cuda (csrc/): compiled by nvcc alone, no libtorch.
#   ELMO_FAST_BUILD_CUDA=0  skip;  =1  required (fail without nvcc or on a compile error);
#   unset                   build when nvcc is found, warn and go on without it otherwise.
#   ELMO_FAST_CUDA_ARCH     '90' (default: sm_90 machine code + compute_90 PTX), or e.g. '80;90'.
# The sources also ship inside the package (elmo_fast/csrc) for the JIT build in lstm_cuda.py.
# ---------------------------------------------------------------------------------------------
CSRC = ROOT / "csrc"
CSRC_FILES = ("lstm_persistent.cu", "lstm_persistent.cuh", "lstm_persistent.h", "module.cpp", "nvcc_build.py")


def _nvcc_build():
    spec = importlib.util.spec_from_file_location("_elmo_fast_nvcc_build", CSRC / "nvcc_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithSources(build_py):
    """Copies csrc/ into the built package as elmo_fast/csrc (the JIT build's sources)."""

    def run(self):
        super().run()
        dest = Path(self.build_lib) / "elmo_fast" / "csrc"
        dest.mkdir(parents=True, exist_ok=True)
        for name in CSRC_FILES:
            shutil.copy2(CSRC / name, dest / name)


# ---------------------------------------------------------------------------------------------
# CPU extension elmo_fast._cpu_kernels (csrc/cpu/): the LSTM recurrence's few-rows GEMM and fused
# cell update, the corpus job's tokens, character ids and output placement (AVX2 + FMA + F16C, chosen at run
# time). Optional: without a C++ compiler, or off x86-64, the install goes on and the reference paths
# (oneDNN and torch ops, elmo_fast.reference; numpy and torch in elmo_fast.corpus) are used instead.
#   ELMO_FAST_BUILD_CPU=0  skip;  =1  required (fail on a compile error);  unset  try, warn on failure.
# ---------------------------------------------------------------------------------------------
CPU_EXT = "elmo_fast._cpu_kernels"


def _cpu_extension():
    import pybind11  # a build requirement (pyproject.toml)

    sources = [f"csrc/cpu/{n}" for n in ("module.cpp", "few_rows_gemm.cpp", "lstm_cell.cpp", "char_ids.cpp",
                                             "place_rows.cpp", "split_tokens.cpp",
                                             "scan_lines.cpp", "utf8_check.cpp")]
    return Extension(CPU_EXT, sources=sources, depends=["csrc/cpu/cpu_kernels.h"],
                     include_dirs=[pybind11.get_include()],
                     language="c++", extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"])


class NvccBuildExt(build_ext):
    skipped: set = set()   # optional extensions not built this time (nothing to copy for `pip install -e`)

    def copy_extensions_to_source(self):
        kept = self.extensions
        self.extensions = [e for e in kept if e.name not in self.skipped]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = kept

    def get_outputs(self):
        missing = {os.path.abspath(self.get_ext_fullpath(n)) for n in self.skipped}
        return [o for o in super().get_outputs() if os.path.abspath(o) not in missing]

    def build_extension(self, ext):
        self.skipped.discard(ext.name)
        try:
            return self._build_extension(ext)
        finally:
            if not os.path.exists(self.get_ext_fullpath(ext.name)):
                self.skipped.add(ext.name)

    def _build_extension(self, ext):
        if ext.name == CPU_EXT:
            mode = os.environ.get("ELMO_FAST_BUILD_CPU", "").strip()
            if mode == "0":
                print("elmo_fast: ELMO_FAST_BUILD_CPU=0, skipping the CPU kernels")
                return
            try:
                return super().build_extension(ext)
            except Exception as exc:  # optional: the reference path falls back to oneDNN
                if mode == "1":
                    raise
                warnings.warn(f"elmo_fast: building the CPU kernels failed; continuing without them.\n{exc}")
                return
        if ext.name != "elmo_fast._lstm_cuda":
            return super().build_extension(ext)
        mode = os.environ.get("ELMO_FAST_BUILD_CUDA", "").strip()
        if mode == "0":
            print("elmo_fast: ELMO_FAST_BUILD_CUDA=0, skipping the CUDA extension")
            return
        nb = _nvcc_build()
        nvcc = nb.find_nvcc()
        if nvcc is None:
            if mode == "1":
                raise RuntimeError("ELMO_FAST_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
            warnings.warn("elmo_fast: nvcc not found; the CUDA LSTM extension is not built "
                          "(it can be JIT-built on first use on a machine with nvcc)")
            return
        out = Path(self.get_ext_fullpath(ext.name))
        try:
            nb.build(out, Path(self.build_temp) / "lstm_cuda", archs=nb.arch_list(), nvcc=nvcc, src_dir=CSRC)
        except Exception as exc:  # optional: a failed build must not fail the install
            if mode == "1":
                raise
            warnings.warn("elmo_fast: building the CUDA LSTM extension failed; continuing without it.\n"
                          f"{exc}")


setup(
    package_dir={"elmo_fast": "src/elmo_fast", "elmo_fast.kernels": "kernels"},
    packages=["elmo_fast", "elmo_fast.reference", "elmo_fast.ops", "elmo_fast.kernels", "elmo_fast.bench",
              "elmo_fast.corpus"],
    # the registry's 'tiny' model (bilm-tf's test fixture, Apache-2.0; see its NOTICE.md)
    package_data={"elmo_fast": ["data/tiny/options.json", "data/tiny/weights.hdf5", "data/tiny/NOTICE.md"]},
    # sources listed for sdists; NvccBuildExt compiles them itself
    ext_modules=[Extension("elmo_fast._lstm_cuda",
                           sources=[f"csrc/{n}" for n in CSRC_FILES[:1]] + ["csrc/module.cpp"])]
    + ([_cpu_extension()] if platform.machine().lower() in ("x86_64", "amd64") else []),
    cmdclass={"build_ext": NvccBuildExt, "build_py": BuildPyWithSources},
)
