// One batch's output converted to the stored dtype and placed in a window buffer, in one pass (part
// of elmo_fast._cpu_kernels; the launcher and its torch / numpy reference: elmo_fast/corpus/place.py).
//
//   src [B, L, T, D] float32, element strides sb, sl, st (a row's D elements contiguous);
//   lengths, rows [B] int64; dst [L, R, D] contiguous, float32 / float16 / bfloat16 bits:
//   dst[l, rows[b] + t, :] = src[b, l, t, :] for t < lengths[b].
//
// Rounding, as torch's conversion: float16 to nearest even (F16C's vcvtps2ph, which torch's vector
// code uses too); bfloat16 the upper 16 bits after adding 0x7FFF + the lowest kept bit (nearest
// even), NaN -> 0x7FC0 (torch's scalar rule; its vector code writes 0xFFFF: both are NaN).
//
// Why: the corpus job on the CPU converted each batch in one torch op into a staging tensor, then
// numpy copied each sentence's rows to the window buffer: two passes over the output, the second
// under the GIL's shadow (bench/NOTES.md, issue 8, seventh session). Here one, without the GIL.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace {

enum Kind : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline uint16_t bf16_s(float x) {
  if (std::isnan(x)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#ifdef ELMO_FAST_X86
#define TARGET __attribute__((target("avx2,f16c")))

// Rows whose start is aligned are written with non-temporal stores: the window buffer is read back
// only once the whole window (tens of MB) is in, so caching it evicts the source for nothing and
// costs a read of every destination line first (measured: 0.20 -> 0.12 s per GB written).
TARGET void row_f16(const float* s, uint16_t* d, int64_t D) {
  int64_t j = 0;
  if ((reinterpret_cast<uintptr_t>(d) & 15) == 0)
    for (; j + 8 <= D; j += 8)
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + j),
                       _mm256_cvtps_ph(_mm256_loadu_ps(s + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; j + 8 <= D; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; j < D; ++j) d[j] = _cvtss_sh(s[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

TARGET inline __m256i bf16_v(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i ordered = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_ORD_Q));
  return _mm256_blendv_epi8(_mm256_set1_epi32(0x7FC0), r, ordered);
}

TARGET void row_bf16(const float* s, uint16_t* d, int64_t D) {
  int64_t j = 0;
  if ((reinterpret_cast<uintptr_t>(d) & 31) == 0)
    for (; j + 16 <= D; j += 16) {
      const __m256i p = _mm256_packus_epi32(bf16_v(_mm256_loadu_ps(s + j)), bf16_v(_mm256_loadu_ps(s + j + 8)));
      _mm256_stream_si256(reinterpret_cast<__m256i*>(d + j), _mm256_permute4x64_epi64(p, 0xD8));
    }
  for (; j + 16 <= D; j += 16) {
    // packus works within 128-bit lanes: [a0-3 b0-3 | a4-7 b4-7] -> reorder the 64-bit quarters
    const __m256i p = _mm256_packus_epi32(bf16_v(_mm256_loadu_ps(s + j)), bf16_v(_mm256_loadu_ps(s + j + 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j), _mm256_permute4x64_epi64(p, 0xD8));
  }
  for (; j < D; ++j) d[j] = bf16_s(s[j]);
}
#endif

void place_rows(uintptr_t src_ptr, int64_t sb, int64_t sl, int64_t st, uintptr_t lengths_ptr, uintptr_t rows_ptr,
                int64_t B, int64_t L, int64_t T, int64_t D, uintptr_t dst_ptr, int64_t R, int kind) {
  const auto* src = reinterpret_cast<const float*>(src_ptr);
  const auto* lengths = reinterpret_cast<const int64_t*>(lengths_ptr);
  const auto* rows = reinterpret_cast<const int64_t*>(rows_ptr);
  if (B < 0 || L < 0 || T < 0 || D < 0 || R < 0 || kind < kFloat32 || kind > kBFloat16)
    throw py::value_error("place_rows: bad sizes or dtype");
  for (int64_t b = 0; b < B; ++b)
    if (lengths[b] < 0 || lengths[b] > T || rows[b] < 0 || rows[b] > R - lengths[b])
      throw py::value_error("place_rows: sentence " + std::to_string(b) + " is outside the batch or the buffer");
  if (kind != kFloat32 && !elmo_fast_cpu::cpu_supported())
    throw std::runtime_error("place_rows: this CPU lacks AVX2/F16C");
  py::gil_scoped_release nogil;  // the model stage runs this beside the feeder and the writer
  const size_t item = kind == kFloat32 ? 4 : 2;
  auto* dst = reinterpret_cast<char*>(dst_ptr);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t t = 0; t < lengths[b]; ++t) {
        const float* s = src + b * sb + l * sl + t * st;
        char* d = dst + ((l * R + rows[b] + t) * D) * item;
        if (kind == kFloat32) {
          std::memcpy(d, s, D * 4);
          continue;
        }
#ifdef ELMO_FAST_X86
        if (kind == kFloat16)
          row_f16(s, reinterpret_cast<uint16_t*>(d), D);
        else
          row_bf16(s, reinterpret_cast<uint16_t*>(d), D);
#endif
      }
#ifdef ELMO_FAST_X86
  _mm_sfence();
#endif
}

}  // namespace

namespace elmo_fast_cpu {
void register_place_rows(py::module_& m) {
  m.def("place_rows", &place_rows, py::arg("src"), py::arg("sb"), py::arg("sl"), py::arg("st"), py::arg("lengths"),
        py::arg("rows"), py::arg("B"), py::arg("L"), py::arg("T"), py::arg("D"), py::arg("dst"), py::arg("R"),
        py::arg("kind"),
        "a batch's rows [B, L, T, D] float32 -> a window buffer [L, R, D] (0 float32, 1 float16, 2 bfloat16 "
        "bits), converted in the same pass (see place_rows.cpp); raw pointers, element strides");
}
}  // namespace elmo_fast_cpu
