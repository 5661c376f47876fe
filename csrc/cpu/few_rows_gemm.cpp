// The CPU GEMM of the LSTM recurrence (part of elmo_fast._cpu_kernels, see module.cpp), out (+)= x @ W^T for
// a few rows x [n, K] (n ~ 1..64) against a large fixed weight W [N, K], on ONE thread.
//
// Why: the recurrence multiplies the running rows by W_hh [4C, P] and W_p [P, C] at every step
// (original model: 33.5 + 8.4 MB fp32, streamed from memory 4 x T times per batch). oneDNN's packed
// GEMM reaches about half of one core's FMA rate at these row counts (bench/NOTES.md, issue 12,
// third session); this kernel reads each weight element once per call and uses it for every row.
//
// Weight layout (made once by the Python launcher, elmo_fast/reference/_cpu_gemm.py): panels of 16
// output columns, wp[p][k][j] = W[16 p + j][k], zero-padded to a multiple of 16 columns, so one
// panel is a contiguous [K, 16] block that the hardware prefetcher streams in order.
//
// Loop order: panel (16 columns) -> K chunk of KC -> tile of up to MR = 6 rows -> k. The micro-kernel
// holds a 6 x 16 accumulator tile in 12 ymm registers (+ 2 weight vectors + 1 broadcast = 15 of
// 16), so each 64-byte weight load feeds 12 FMAs; the panel's K chunk (16 KB) stays in L1 for the
// row tiles after the first. The rows of x are read in K chunks (6 KB per tile), from L1/L2.
//
// The Python launcher checks dtypes, shapes and strides before any pointer gets here (module.cpp).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_kernels.h"

namespace py = pybind11;

namespace {

using elmo_fast_cpu::cpu_supported;

constexpr int NR = 16;     // output columns per panel (two 8-wide vectors)
constexpr int MR = 6;      // rows per micro-kernel tile
constexpr int64_t KC = 256;  // K per chunk: the chunk of a panel is KC * 16 * 4 = 16 KB

#ifdef ELMO_FAST_X86

// c[r][0:ncols] (+)= sum_k x[r][k] * w[k][0:16] for r < ROWS, k < kc.
// x: row r at x + r * ldx; w: [kc][16]; c: row r at c + r * ldc; load: start from c (else zero).
// pf: when not null, the k loop also prefetches pf[16 k]: the next chunk of the weight stream, so
// that memory keeps streaming while the later row tiles of this chunk compute from L1.
template <int ROWS>
__attribute__((target("avx2,fma"))) void tile(const float* x, int64_t ldx, const float* w, int64_t kc,
                                              float* c, int64_t ldc, int ncols, bool load, const float* pf) {
  __m256 lo[ROWS], hi[ROWS];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    if (!load) {
      lo[r] = _mm256_setzero_ps();
      hi[r] = _mm256_setzero_ps();
    } else if (ncols == NR) {
      lo[r] = _mm256_loadu_ps(c + r * ldc);
      hi[r] = _mm256_loadu_ps(c + r * ldc + 8);
    } else {  // the last, partial panel: never read past column ncols of c
      alignas(32) float buf[NR] = {0};
      std::memcpy(buf, c + r * ldc, sizeof(float) * ncols);
      lo[r] = _mm256_load_ps(buf);
      hi[r] = _mm256_load_ps(buf + 8);
    }
  }
  for (int64_t k = 0; k < kc; ++k) {
    if (pf != nullptr) _mm_prefetch(reinterpret_cast<const char*>(pf + k * NR), _MM_HINT_T0);
    const __m256 w0 = _mm256_loadu_ps(w + k * NR);
    const __m256 w1 = _mm256_loadu_ps(w + k * NR + 8);
  #pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * ldx + k);
      lo[r] = _mm256_fmadd_ps(xb, w0, lo[r]);
      hi[r] = _mm256_fmadd_ps(xb, w1, hi[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    if (ncols == NR) {
      _mm256_storeu_ps(c + r * ldc, lo[r]);
      _mm256_storeu_ps(c + r * ldc + 8, hi[r]);
    } else {
      alignas(32) float buf[NR];
      _mm256_store_ps(buf, lo[r]);
      _mm256_store_ps(buf + 8, hi[r]);
      std::memcpy(c + r * ldc, buf, sizeof(float) * ncols);
    }
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int, bool,
                       const float*);
constexpr TileFn TILES[MR + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

#endif

// out[n, N] (+)= x[n, K] @ W^T with W packed as described at the top; strides in elements.
void gemm(uintptr_t x_ptr, int64_t n, int64_t K, int64_t ldx, uintptr_t wp_ptr, int64_t N, uintptr_t c_ptr,
          int64_t ldc, bool accumulate) {
  if (n < 0 || K < 0 || N < 0 || ldx < K || ldc < N) throw py::value_error("few_rows_gemm: bad sizes or strides");
  if (!cpu_supported()) throw std::runtime_error("few_rows_gemm: this CPU lacks AVX2/FMA");
#ifdef ELMO_FAST_X86
  const float* x = reinterpret_cast<const float*>(x_ptr);
  const float* wp = reinterpret_cast<const float*>(wp_ptr);
  float* c = reinterpret_cast<float*>(c_ptr);
  py::gil_scoped_release nogil;  // the two directions of a layer call this from two threads
  const int64_t panels = (N + NR - 1) / NR;
  const float* end = wp + panels * K * NR;
  if (K == 0) {  // no products: out = 0, or out unchanged when accumulating
    if (!accumulate)
      for (int64_t r = 0; r < n; ++r) std::memset(c + r * ldc, 0, sizeof(float) * N);
    return;
  }
  for (int64_t p = 0; p < panels; ++p) {
    const float* panel = wp + p * K * NR;
    const int ncols = int(std::min<int64_t>(NR, N - p * NR));
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      const bool load = accumulate || k0 > 0;
      // the chunk after this one starts right after it (panels are stored one after the other)
      const float* next = panel + (k0 + kc) * NR;
      const float* pf = next + kc * NR <= end ? next : nullptr;
      for (int64_t r0 = 0; r0 < n; r0 += MR) {
        const int rows = int(std::min<int64_t>(MR, n - r0));
        TILES[rows](x + r0 * ldx + k0, ldx, panel + k0 * NR, kc, c + r0 * ldc + p * NR, ldc, ncols, load,
                    r0 == 0 ? pf : nullptr);
      }
    }
  }
#endif
}

}  // namespace

namespace elmo_fast_cpu {
void register_gemm(py::module_& m) {
  m.attr("PANEL") = NR;
  m.def("gemm", &gemm, py::arg("x"), py::arg("n"), py::arg("K"), py::arg("ldx"), py::arg("wp"), py::arg("N"),
        py::arg("out"), py::arg("ldc"), py::arg("accumulate"),
        "out[n, N] (+)= x[n, K] @ W^T, W packed in panels of 16 columns; raw float32 pointers, element strides");
}
}  // namespace elmo_fast_cpu
