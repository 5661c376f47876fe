// Shared by the sources of elmo_fast._cpu_kernels (module.cpp, few_rows_gemm.cpp, lstm_cell.cpp,
// char_ids.cpp, place_rows.cpp, split_tokens.cpp).
#pragma once

#include <pybind11/pybind11.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ELMO_FAST_X86 1
#endif

namespace elmo_fast_cpu {

bool cpu_supported();                             // AVX2 and FMA on this CPU (module.cpp)
void register_gemm(pybind11::module_& m);         // few_rows_gemm.cpp
void register_cell(pybind11::module_& m);         // lstm_cell.cpp
void register_char_ids(pybind11::module_& m);     // char_ids.cpp
void register_place_rows(pybind11::module_& m);   // place_rows.cpp
void register_split_tokens(pybind11::module_& m); // split_tokens.cpp

}  // namespace elmo_fast_cpu
