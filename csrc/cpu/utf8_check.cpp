// Where bytes stop being UTF-8, as Python's strict decoder sees it (part of elmo_fast._cpu_kernels;
// the launcher and its Python reference: elmo_fast/corpus/lines.py, first_invalid_utf8 /
// first_invalid_utf8_ref; the caller: reader.py, the first pass).
//
//   data [n] uint8 -> the offset of the first byte of the first ill-formed sequence (what
//   UnicodeDecodeError.start says), or -1 when all of it is UTF-8. Well-formed is the Unicode
//   Standard's table 3-7: no overlong forms (C0, C1, E0 80-9F, F0 80-8F), no surrogates (ED A0-BF),
//   nothing above U+10FFFF (F4 90-BF, F5-FF); a sequence cut off by the end of data is ill-formed
//   (the caller passes whole lines, which a line end never splits).
//
// Why: the first pass checked the corpus with Python's decoder, which builds the whole text as a
// str only to throw it away: 13 of its ~35 ms for 3.3 MB (bench/NOTES.md, issue 8, tenth
// session). Here a scan, 8 ASCII bytes at a time, without the GIL.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace {

int64_t utf8_check(uintptr_t data_ptr, int64_t n) {
  if (n < 0) throw py::value_error("utf8_check: bad size");
  const auto* d = reinterpret_cast<const uint8_t*>(data_ptr);
  py::gil_scoped_release nogil;
  int64_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {   // a run of ASCII, a word at a time
      uint64_t w;
      std::memcpy(&w, d + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const uint8_t c = d[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint8_t lo = 0x80, hi = 0xBF;   // the second byte's range (table 3-7)
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;   // a continuation byte without a lead, C0, C1, F5-FF
    }
    if (i + 1 >= n || d[i + 1] < lo || d[i + 1] > hi) return i;
    for (int k = 2; k < len; ++k)
      if (i + k >= n || (d[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return -1;
}

}  // namespace

namespace elmo_fast_cpu {
void register_utf8_check(py::module_& m) {
  m.def("utf8_check", &utf8_check, py::arg("data"), py::arg("n"),
        "offset of the first ill-formed UTF-8 sequence in data[:n] (raw pointer), -1 if none "
        "(utf8_check.cpp)");
}
}  // namespace elmo_fast_cpu
