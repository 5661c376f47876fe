// pybind11 module elmo_fast._cpu_kernels: the LSTM recurrence's CPU kernels and the corpus job's
// per-byte work (the first pass, tokens, character ids, output placement), raw pointers and sizes
// in, no libtorch. The Python launchers (elmo_fast/reference/_cpu_gemm.py, _cpu_cell.py,
// elmo_fast/corpus/lines.py, tokens.py, place.py)
// check dtypes, shapes and strides before any pointer gets here. The vector kernels are compiled for
// AVX2 + FMA + F16C by target attributes, so the module builds with any x86-64 compiler and loads on
// any x86-64 CPU; `supported()` says whether this one can run them (char_ids is plain C++).
#include <pybind11/pybind11.h>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace elmo_fast_cpu {

static bool detect() {
#ifdef ELMO_FAST_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
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
  m.doc() = "elmo_fast CPU kernels: the LSTM recurrence's few-rows GEMM and fused cell update; the corpus "
            "job's first pass, tokens, character ids and output placement";
  m.def("supported", &elmo_fast_cpu::cpu_supported, "whether this CPU can run the vector kernels (AVX2, FMA, F16C)");
  elmo_fast_cpu::register_gemm(m);
  elmo_fast_cpu::register_cell(m);
  elmo_fast_cpu::register_char_ids(m);
  elmo_fast_cpu::register_place_rows(m);
  elmo_fast_cpu::register_split_tokens(m);
  elmo_fast_cpu::register_scan_lines(m);
  elmo_fast_cpu::register_utf8_check(m);
}
