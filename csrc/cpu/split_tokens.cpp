// Whitespace tokenisation of many sentences' UTF-8 bytes in one pass (part of elmo_fast._cpu_kernels;
// the launcher and its numpy reference: elmo_fast/corpus/tokens.py, tokenize / tokenize_ref).
//
//   data [n] uint8: the sentences' UTF-8 joined by '\n'; ASCII whitespace (\t \n \v \f \r,
//   \x1c-\x1f, space) separates tokens, every other byte belongs to one;
//   starts, lens [cap] int64 out: each token's first byte and length, in order (cap >= n / 2 + 1
//   holds any text); counts [n_lines] int64 out: tokens per sentence.
//   Returns the number of tokens; -1 when the bytes hold other than n_lines - 1 line ends (a
//   sentence with a line end inside: its boundaries cannot be told from the bytes); -2 when they
//   hold one of the 23 non-ASCII characters str.split() also splits on (U+0085, U+00A0, U+1680,
//   U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000): the caller splits those in Python.
//
// Why: in numpy this is a table lookup, four boolean passes, two nonzero scans and a searchsorted
// over every byte, holding the GIL between them; it was half of the corpus job's first pass and a
// third of its feeder (bench/NOTES.md, issue 8, seventh session). Here one pass, without the GIL.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace {

using elmo_fast_cpu::is_space;
using elmo_fast_cpu::wide_space;

int64_t split_tokens(uintptr_t data_ptr, int64_t n, uintptr_t starts_ptr, uintptr_t lens_ptr, int64_t cap,
                     uintptr_t counts_ptr, int64_t n_lines) {
  if (n < 0 || n_lines < 1 || cap < n / 2 + 1) throw py::value_error("split_tokens: bad sizes");
  const auto* d = reinterpret_cast<const uint8_t*>(data_ptr);
  auto* starts = reinterpret_cast<int64_t*>(starts_ptr);
  auto* lens = reinterpret_cast<int64_t*>(lens_ptr);
  auto* counts = reinterpret_cast<int64_t*>(counts_ptr);
  py::gil_scoped_release nogil;  // the feeder runs this beside the model stage and the writer
  int64_t tokens = 0, line = 0, line_first = 0, start = -1;
  for (int64_t i = 0; i <= n; ++i) {
    const bool end = i == n;
    const uint8_t c = end ? uint8_t('\n') : d[i];
    if (!is_space(c)) {
      if (c >= 0xC2 && c <= 0xE3 && wide_space(d + i, n - i)) return -2;
      if (start < 0) start = i;
      continue;
    }
    if (start >= 0) {  // a token ends here (tokens never exceed n / 2 + 1: each but the last needs a space)
      starts[tokens] = start;
      lens[tokens] = i - start;
      ++tokens;
      start = -1;
    }
    if (c == '\n') {
      if (line == n_lines) return -1;  // more line ends than sentences
      counts[line++] = tokens - line_first;
      line_first = tokens;
    }
  }
  return line == n_lines ? tokens : -1;
}

}  // namespace

namespace elmo_fast_cpu {
void register_split_tokens(py::module_& m) {
  m.def("split_tokens", &split_tokens, py::arg("data"), py::arg("n"), py::arg("starts"), py::arg("lens"),
        py::arg("cap"), py::arg("counts"), py::arg("n_lines"),
        "whitespace tokens of sentences joined by '\\n' (see split_tokens.cpp); raw pointers; the token "
        "count, -1 when the line ends do not match n_lines, -2 on a non-ASCII space");
}
}  // namespace elmo_fast_cpu
