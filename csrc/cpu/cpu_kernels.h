// Shared by the sources of elmo_fast._cpu_kernels (module.cpp, few_rows_gemm.cpp, lstm_cell.cpp,
// char_ids.cpp, place_rows.cpp, split_tokens.cpp, scan_lines.cpp, utf8_check.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

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
void register_scan_lines(pybind11::module_& m);   // scan_lines.cpp
void register_utf8_check(pybind11::module_& m);   // utf8_check.cpp

// str.isspace() within ASCII: \t \n \v \f \r, \x1c-\x1f, space (split_tokens.cpp, scan_lines.cpp)
inline bool is_space(uint8_t c) { return c == ' ' || (c >= 9 && c <= 13) || (c >= 28 && c <= 31); }

// whether the UTF-8 at p (at most `left` bytes, p[0] >= 0x80) starts with a non-ASCII Unicode space
inline bool wide_space(const uint8_t* p, int64_t left) {
  if (p[0] == 0xC2) return left >= 2 && (p[1] == 0x85 || p[1] == 0xA0);
  if (left < 3) return false;
  if (p[0] == 0xE1) return p[1] == 0x9A && p[2] == 0x80;
  if (p[0] == 0xE2)
    return (p[1] == 0x80 && (p[2] <= 0x8A || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF)) ||
           (p[1] == 0x81 && p[2] == 0x9F);
  if (p[0] == 0xE3) return p[1] == 0x80 && p[2] == 0x80;
  return false;
}

}  // namespace elmo_fast_cpu
