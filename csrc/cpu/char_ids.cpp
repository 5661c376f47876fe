// A batch's character ids straight from a token table's bytes (part of elmo_fast._cpu_kernels; the
// launcher and its numpy reference: elmo_fast/corpus/tokens.py, TokenTable.char_ids).
//
//   data [N] uint8 (UTF-8); starts, lens [n_tok] int64: token i is data[starts[i] : starts[i] + lens[i]];
//   first, count [B] int64: sentence b is tokens first[b] .. first[b] + count[b] - 1;
//   out [B, T, 50] int64 (contiguous): row (b, t < count[b]) = allennlp's batch_to_ids row of that
//   token (+1 shifted: begin-of-word, at most 48 bytes, end-of-word, padding; "<S>" / "</S>" as
//   their one-character words), rows t >= count[b] zero.
//
// Why: numpy builds this with about ten index-array passes over every byte, holding the GIL between
// them (1.6 M tokens/s on one core, the corpus job's feeder: bench/NOTES.md, issue 8, seventh
// session); here it is one pass without the GIL. Every index is checked before anything is written.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace {

constexpr int64_t kWidth = 50;     // MAX_WORD_LENGTH
constexpr int64_t kMaxBytes = 48;  // bytes kept of a token
// ids after the +1 shift (elmo_fast/chars.py)
constexpr int64_t kBos = 257, kEos = 258, kBow = 259, kEow = 260, kPad = 261;

void char_ids(uintptr_t data_ptr, int64_t n_data, uintptr_t starts_ptr, uintptr_t lens_ptr, int64_t n_tok,
              uintptr_t first_ptr, uintptr_t count_ptr, int64_t B, int64_t T, uintptr_t out_ptr) {
  const auto* data = reinterpret_cast<const uint8_t*>(data_ptr);
  const auto* starts = reinterpret_cast<const int64_t*>(starts_ptr);
  const auto* lens = reinterpret_cast<const int64_t*>(lens_ptr);
  const auto* first = reinterpret_cast<const int64_t*>(first_ptr);
  const auto* count = reinterpret_cast<const int64_t*>(count_ptr);
  auto* out = reinterpret_cast<int64_t*>(out_ptr);
  if (B < 0 || T < 0 || n_tok < 0 || n_data < 0) throw py::value_error("char_ids: negative size");
  for (int64_t b = 0; b < B; ++b) {
    if (count[b] < 0 || count[b] > T || first[b] < 0 || first[b] > n_tok - count[b])
      throw py::value_error("char_ids: sentence " + std::to_string(b) + " is outside the token table or the batch");
    for (int64_t i = first[b]; i < first[b] + count[b]; ++i)
      if (starts[i] < 0 || lens[i] < 0 || starts[i] > n_data - lens[i])
        throw py::value_error("char_ids: token " + std::to_string(i) + " is outside the data");
  }
  py::gil_scoped_release nogil;  // the feeder thread runs this beside the model stage and the writer
  for (int64_t b = 0; b < B; ++b) {
    int64_t* row = out + b * T * kWidth;
    for (int64_t t = 0; t < count[b]; ++t, row += kWidth) {
      const int64_t tok = first[b] + t;
      const uint8_t* p = data + starts[tok];
      const int64_t n = lens[tok];
      if ((n == 3 && std::memcmp(p, "<S>", 3) == 0) || (n == 4 && std::memcmp(p, "</S>", 4) == 0)) {
        row[0] = kBow;
        row[1] = n == 3 ? kBos : kEos;
        row[2] = kEow;
        std::fill(row + 3, row + kWidth, kPad);
        continue;
      }
      const int64_t k = std::min(n, kMaxBytes);
      row[0] = kBow;
      for (int64_t j = 0; j < k; ++j) row[1 + j] = int64_t(p[j]) + 1;
      row[k + 1] = kEow;
      std::fill(row + k + 2, row + kWidth, kPad);
    }
    std::memset(row, 0, sizeof(int64_t) * kWidth * (T - count[b]));  // padding tokens: no token here
  }
}

}  // namespace

namespace elmo_fast_cpu {
void register_char_ids(py::module_& m) {
  m.def("char_ids", &char_ids, py::arg("data"), py::arg("n_data"), py::arg("starts"), py::arg("lens"),
        py::arg("n_tok"), py::arg("first"), py::arg("count"), py::arg("B"), py::arg("T"), py::arg("out"),
        "a batch's character ids [B, T, 50] int64 from a token table's bytes (see char_ids.cpp); raw pointers");
}
}  // namespace elmo_fast_cpu
