// The first pass's per-line work over a block of the corpus's bytes, in one pass (part of
// elmo_fast._cpu_kernels; the launcher and its Python reference: elmo_fast/corpus/lines.py,
// scan_lines / scan_lines_ref; the caller: reader.py, scan).
//
//   data [n] uint8: whole lines of UTF-8, each ended by \n, \r\n or \r (Python's universal newlines;
//   the caller keeps a last partial line for the next block);
//   out [n] uint8 out: each line stripped of its leading and trailing whitespace and ended by '\n'
//   (what the input hash covers: the bytes of "\n".join(lines) + "\n");
//   counts [cap] int64 out: whitespace tokens per line (len(line.split())).
//   Returns (lines, bytes written to out); lines is -2 when the block holds one of the non-ASCII
//   characters str.split() and str.strip() also treat as space (U+0085, U+00A0, ...: cpu_kernels.h):
//   the caller does that block in Python.
//
// Why: in Python the first pass is a decode, three replace / split passes, a strip per line, a join
// and an encode for the hash, and the token count (split_tokens) over the joined text: ~22 ms per MB,
// before the job can start anything else (bench/NOTES.md, issue 8, ninth session). Here one pass,
// without the GIL; the caller checks the block's UTF-8 first (utf8_check.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace {

using elmo_fast_cpu::is_space;
using elmo_fast_cpu::wide_space;

// each byte's class: a word byte, a space (ASCII whitespace but the line ends), a line end (\n \r), or
// a lead byte that may start a non-ASCII space (0xC2-0xE3: checked by wide_space)
enum Class : uint8_t { kWord = 0, kSpace = 1, kEnd = 2, kLead = 3 };

struct Classes {
  uint8_t c[256];
  Classes() {
    for (int b = 0; b < 256; ++b)
      c[b] = (b == '\n' || b == '\r') ? kEnd : is_space(uint8_t(b)) ? kSpace : (b >= 0xC2 && b <= 0xE3) ? kLead : kWord;
  }
};
const Classes kClasses;
const uint8_t* const kClass = kClasses.c;

std::pair<int64_t, int64_t> scan_lines(uintptr_t data_ptr, int64_t n, uintptr_t out_ptr, uintptr_t counts_ptr,
                                       int64_t cap) {
  if (n < 0 || cap < 0) throw py::value_error("scan_lines: bad sizes");
  const auto* d = reinterpret_cast<const uint8_t*>(data_ptr);
  auto* out = reinterpret_cast<uint8_t*>(out_ptr);
  auto* counts = reinterpret_cast<int64_t*>(counts_ptr);
  if (n > 0 && d[n - 1] != '\n' && d[n - 1] != '\r')
    throw py::value_error("scan_lines: the block does not end with a line end");
  py::gil_scoped_release nogil;  // the first pass may run beside other work of the caller's
  int64_t line = 0, o = 0, i = 0;
  while (i < n) {
    if (line == cap) {
      py::gil_scoped_acquire gil;
      throw py::value_error("scan_lines: more lines than counts");
    }
    int64_t tokens = 0, first = -1, last_end = 0;
    // the block ends with a line end, so no loop needs a bound check
    for (;;) {
      while (kClass[d[i]] == kSpace) ++i;
      if (kClass[d[i]] == kEnd) break;
      if (first < 0) first = i;   // a token starts here
      ++tokens;
      for (;; ++i) {
        const uint8_t k = kClass[d[i]];
        if (k == kWord) continue;
        if (k != kLead) break;
        if (wide_space(d + i, n - i)) return {-2, 0};
      }
      last_end = i;
    }
    if (first >= 0) {
      std::memcpy(out + o, d + first, last_end - first);
      o += last_end - first;
    }
    out[o++] = '\n';
    counts[line++] = tokens;
    if (d[i] == '\r' && i + 1 < n && d[i + 1] == '\n') ++i;   // \r\n: one line end
    ++i;
  }
  return {line, o};
}

}  // namespace

namespace elmo_fast_cpu {
void register_scan_lines(py::module_& m) {
  m.def("scan_lines", &scan_lines, py::arg("data"), py::arg("n"), py::arg("out"), py::arg("counts"),
        py::arg("cap"),
        "the stripped lines (each ended by '\\n') and tokens per line of whole lines of UTF-8 (see "
        "scan_lines.cpp); raw pointers; (lines, bytes out), lines -2 on a non-ASCII space");
}
}  // namespace elmo_fast_cpu
