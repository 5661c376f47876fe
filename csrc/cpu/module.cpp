// pybind11 module elmo_fast._cpu_kernels: the LSTM recurrence's CPU kernels, raw pointers and sizes in,
// no libtorch. The Python launchers (elmo_fast/reference/_cpu_gemm.py, _cpu_cell.py) check dtypes,
// shapes and strides before any pointer gets here. The kernels are compiled for AVX2 + FMA by
// target attributes, so the module builds with any x86-64 compiler and loads on any x86-64 CPU;
// `supported()` says whether this one can run them.
#include <pybind11/pybind11.h>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace elmo_fast_cpu {

static bool detect() {
#ifdef ELMO_FAST_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_supported() {
  static const bool ok = detect();  // asked on every kernel call
  return ok;
}

}  // namespace elmo_fast_cpu

PYBIND11_MODULE(_cpu_kernels, m) {
  m.doc() = "elmo_fast CPU kernels: the LSTM recurrence's few-rows GEMM and fused cell update";
  m.def("supported", &elmo_fast_cpu::cpu_supported, "whether this CPU can run the kernels (AVX2 and FMA)");
  elmo_fast_cpu::register_gemm(m);
  elmo_fast_cpu::register_cell(m);
}
