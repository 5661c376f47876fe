// The LSTM recurrence's element-wise cell update for one step, fused into one pass (part of
// elmo_fast._cpu_kernels; the launcher and its torch reference: elmo_fast/reference/_cpu_cell.py).
//
//   gates g [n, 4C] (pre-activations i, f, g, o), state c [n, C] (updated in place):
//   c = clip(sigmoid(f) * c + sigmoid(i) * tanh(g), cell_clip);  out [n, C] = sigmoid(o) * tanh(c)
//
// Why: in torch ops this is 8 passes over [n, C]-sized slices per step (sigmoid_, tanh_, mul_,
// addcmul_, clamp_, tanh, mul_), each a separate dispatch; fused, the gates are read once and c
// once. exp is evaluated as 2^k * p(r) with x = k ln2 + r, |r| <= ln2 / 2, p the degree-7 Taylor
// polynomial of e^r (relative error ~2e-8 before rounding, a few float ulps after), sigmoid as
// 1 / (1 + e^-x) with an exact division, tanh(x) as 1 - 2 / (1 + e^2x) (absolute error ~1e-7 near
// 0, where the result is small: the cell's values are added to O(1) terms, so that is what counts).
// The gates are overwritten (they are scratch); out must not overlap g or c.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace {

// scalar versions of the same formulas (the tail of a row, and the definition the vector code follows)
inline float exp_s(float x) {
  x = std::fmin(std::fmax(x, -86.0f), 88.0f);  // 2^k p(r) stays a normal float
  const float k = std::nearbyint(x * 1.44269504088896341f);
  const float r = std::fma(k, -0.693145751953125f, std::fma(k, -1.428606765330187e-06f, x));
  float p = 1.0f / 5040.0f;
  p = std::fma(p, r, 1.0f / 720.0f);
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  return std::ldexp(p, int(k));
}
inline float sigmoid_s(float x) { return 1.0f / (1.0f + exp_s(-x)); }
inline float tanh_s(float x) { return 1.0f - 2.0f / (1.0f + exp_s(2.0f * x)); }

#ifdef ELMO_FAST_X86

#define TARGET __attribute__((target("avx2,fma")))

TARGET inline __m256 exp_v(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-86.0f)), _mm256_set1_ps(88.0f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - k ln2, ln2 split in two so k * hi is exact
  const __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-0.693145751953125f),
                                   _mm256_fmadd_ps(k, _mm256_set1_ps(-1.428606765330187e-06f), x));
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // times 2^k: k added to the exponent field (-124 <= k <= 127 after the clamp: a normal result)
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}
TARGET inline __m256 sigmoid_v(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_v(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
TARGET inline __m256 tanh_v(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp_v(_mm256_add_ps(x, x));
  return _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e)));
}

TARGET void cell_rows(float* g, int64_t ldg, float* c, int64_t ldc, float* out, int64_t ldo, int64_t n,
                      int64_t C, float clip, bool has_clip) {
  const __m256 lo = _mm256_set1_ps(-clip), hi = _mm256_set1_ps(clip);
  for (int64_t r = 0; r < n; ++r) {
    float* gi = g + r * ldg;
    float* gf = gi + C;
    float* gg = gi + 2 * C;
    float* go = gi + 3 * C;
    float* cr = c + r * ldc;
    float* orow = out + r * ldo;
    int64_t j = 0;
    for (; j + 8 <= C; j += 8) {
      const __m256 i = sigmoid_v(_mm256_loadu_ps(gi + j));
      const __m256 f = sigmoid_v(_mm256_loadu_ps(gf + j));
      const __m256 t = tanh_v(_mm256_loadu_ps(gg + j));
      const __m256 o = sigmoid_v(_mm256_loadu_ps(go + j));
      __m256 cn = _mm256_fmadd_ps(i, t, _mm256_mul_ps(f, _mm256_loadu_ps(cr + j)));
      if (has_clip) cn = _mm256_min_ps(_mm256_max_ps(cn, lo), hi);
      _mm256_storeu_ps(cr + j, cn);
      _mm256_storeu_ps(orow + j, _mm256_mul_ps(o, tanh_v(cn)));
    }
    for (; j < C; ++j) {
      float cn = std::fma(sigmoid_s(gi[j]), tanh_s(gg[j]), sigmoid_s(gf[j]) * cr[j]);
      if (has_clip) cn = std::fmin(std::fmax(cn, -clip), clip);
      cr[j] = cn;
      orow[j] = sigmoid_s(go[j]) * tanh_s(cn);
    }
  }
}

#endif

void cell_update(uintptr_t g_ptr, int64_t ldg, uintptr_t c_ptr, int64_t ldc, uintptr_t out_ptr, int64_t ldo,
                 int64_t n, int64_t C, double cell_clip) {
  if (n < 0 || C < 0 || ldg < 4 * C || ldc < C || ldo < C) throw py::value_error("cell_update: bad sizes or strides");
  if (!elmo_fast_cpu::cpu_supported()) throw std::runtime_error("cell_update: this CPU lacks AVX2/FMA");
#ifdef ELMO_FAST_X86
  const bool has_clip = !std::isnan(cell_clip);
  py::gil_scoped_release nogil;  // the two directions of a layer call this from two threads
  cell_rows(reinterpret_cast<float*>(g_ptr), ldg, reinterpret_cast<float*>(c_ptr), ldc,
            reinterpret_cast<float*>(out_ptr), ldo, n, C, has_clip ? float(cell_clip) : 0.0f, has_clip);
#endif
}

// the scalar formulas, for the test of the vector code's tail and of the formulas themselves
float sigmoid_scalar(float x) { return sigmoid_s(x); }
float tanh_scalar(float x) { return tanh_s(x); }

}  // namespace

namespace elmo_fast_cpu {
void register_cell(py::module_& m) {
  m.def("cell_update", &cell_update, py::arg("gates"), py::arg("ldg"), py::arg("c"), py::arg("ldc"), py::arg("out"),
        py::arg("ldo"), py::arg("n"), py::arg("C"), py::arg("cell_clip"),
        "one LSTM step's element-wise update (see lstm_cell.cpp); raw float32 pointers, element strides; "
        "cell_clip NaN for none");
  m.def("sigmoid_scalar", &sigmoid_scalar);
  m.def("tanh_scalar", &tanh_scalar);
}
}  // namespace elmo_fast_cpu
