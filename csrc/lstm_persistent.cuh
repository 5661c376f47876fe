// Persistent projected-LSTM kernel: one cooperative launch runs every timestep of one layer.
//
// Work decomposition. The C cells of a direction are cut into `chunks` units of `cpb` cells; unit
// u = dir * chunks + chunk. In shared-memory mode every unit has its own CTA, which copies its
// slice of the weights on chip once (W_hh rows i,f,g,o of its cells: 4*cpb x P; W_p columns of its
// cells: cpb x P, stored transposed) and keeps them for the whole run. In global mode a CTA loops
// over units and reads the weights from global memory (L2) at every step.
//
// One step s (every CTA executes the same number of grid barriers: no early exit anywhere):
//   phase A  for each unit of this CTA, for each batch tile of BT rows with an active row:
//            h tile (BT x P, fp32) -> shared memory; one warp per cell computes its 4 gate dot
//            products for the BT rows (lanes split P, then a warp reduce-scatter), adds xproj,
//            updates c (fp32, global, owned by exactly one thread), clips, m = sig(o) tanh(c);
//            then the CTA multiplies m (BT x cpb) by its W_p slice -> partial[dir][chunk][b][:]
//   grid.sync()
//   phase B  every (dir, b, p): h = clip(sum over chunks of partial, in a fixed order) for rows
//            still active -> h state and out[b, pos]; rows past their length write out[b, s] = 0
//   grid.sync()
// The fixed reduction order makes the result deterministic (no atomics).
//
// Memory ordering: data written by other CTAs during the kernel (h state, partials) is read with
// ld.global.cg (L2, never a stale L1 line), after a cooperative-groups grid barrier, which fences
// at device scope. The cell state of (b, cell) is read and written by one fixed thread only.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace elmo_fast {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kReduceGroup = 8;  // lanes that share one output element in phase B

struct DirParams {
  const void* xproj;    // [B, T, 4C]
  const void* w_hh;     // [4C, P]
  const void* w_pT;     // [C, P]
  const int* lengths;   // [B]
  void* out;            // [B, T, P]
  float* h;             // [B, P]
  float* c;             // [B, C]
  int reverse;
};

struct Params {
  DirParams dir[2];
  int ndir, B, T, C, P;
  int cpb;       // cells per unit
  int chunks;    // units per direction
  int has_cell_clip, has_proj_clip;
  float cell_clip, proj_clip;
  float* partial;  // [ndir][chunks][B][P]
};

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// Dynamic shared memory of one CTA; the host sizes the launch with the same function.
__host__ __device__ inline size_t lstm_smem_bytes(bool on_chip, size_t wbytes, int bt, int cpb, int P) {
  size_t n = 0;
  if (on_chip) n += align16(size_t(4) * cpb * P * wbytes) + align16(size_t(cpb) * P * wbytes);
  n += align16(size_t(bt) * P * sizeof(float));    // h tile
  n += align16(size_t(bt) * cpb * sizeof(float));  // m tile
  return n;
}

template <typename T> struct Num;
template <> struct Num<float> {
  static __device__ __forceinline__ float to_f(float x) { return x; }
  static __device__ __forceinline__ float from_f(float x) { return x; }
  static __device__ __forceinline__ float2 pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
};
template <> struct Num<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ float2 pair(const __nv_bfloat16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  }
};

// ---- scalar pieces shared by the kernel and the host emulator (lstm_emulate, CPU-tested) ----
#define ELMO_HD __host__ __device__ __forceinline__

ELMO_HD int clamp_len(int L, int T) { return L < 0 ? 0 : (L > T ? T : L); }
ELMO_HD float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }
ELMO_HD float clip_f(float x, float lim) { return fminf(fmaxf(x, -lim), lim); }
// position in its row that step s of a row of length L handles (s < L): the backward direction
// walks each row from its own last token
ELMO_HD int step_pos(int L, int s, int reverse) { return reverse ? L - 1 - s : s; }
// new cell state from the four gate pre-activations (i, f, g, o order) and the previous state
ELMO_HD float cell_update(float gi, float gf, float gg, float c, int has_clip, float clip) {
  float cn = sigmoid_f(gf) * c + sigmoid_f(gi) * tanhf(gg);
  if (has_clip) cn = clip_f(cn, clip);
  return cn;
}
ELMO_HD float cell_output(float go, float c) { return sigmoid_f(go) * tanhf(c); }
// element of the 4*C gate vector: gate g (0 i, 1 f, 2 g, 3 o) of cell j
ELMO_HD size_t xproj_index(size_t b, int pos, int T, int C, int g, int j) {
  return (b * T + pos) * (size_t(4) * C) + size_t(g) * C + j;
}
// on-chip W_hh copy: row of gate g of the jl-th own cell ([cpb][4][P]); global: row g*C + j of [4C, P]
ELMO_HD int wsmem_row(int jl, int g) { return jl * 4 + g; }
ELMO_HD size_t whh_row(int g, int C, int j) { return size_t(g) * C + j; }
// reduce-scatter bookkeeping: the accumulator slot of (gate g, tile row bb) is g*BT + bb; after the
// scatter lane l holds slot l & (NV - 1)
ELMO_HD int acc_slot(int g, int bb, int BT) { return g * BT + bb; }
ELMO_HD int rs_slot(int lane, int NV) { return lane & (NV - 1); }
// one butterfly stage: the lane with bit S set keeps the upper half (and sends the lower)
ELMO_HD void rs_pick(bool upper, float lo, float hi, float& send, float& keep) {
  send = upper ? lo : hi;
  keep = upper ? hi : lo;
}

// One butterfly stage of the warp reduce-scatter below: the NV-element vector (in v[0..2S)) is
// halved; lanes with bit S set keep the upper half, the others the lower, each adding its partner's.
template <int S>
__device__ __forceinline__ void reduce_scatter_stage(float* v, int lane) {
  const bool upper = (lane & S) != 0;
#pragma unroll
  for (int i = 0; i < S; ++i) {
    float send, keep;
    rs_pick(upper, v[i], v[i + S], send, keep);
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, S);
  }
  if constexpr (S > 1) reduce_scatter_stage<S / 2>(v, lane);
}

// Sums over the lanes that differ in bits >= log2(NV) (a plain butterfly on whole vectors).
template <int NV, int S>
__device__ __forceinline__ void reduce_high_lanes(float* v) {
  if constexpr (S >= NV) {
#pragma unroll
    for (int i = 0; i < NV; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], S);
    reduce_high_lanes<NV, S / 2>(v);
  }
}

// Warp reduce-scatter of NV (power of two, <= 32) per-lane values: afterwards lane l holds the
// warp-wide sum of element (l & (NV - 1)). Costs (5 - log2 NV) * NV + NV - 1 shuffles instead of
// 5 * NV for NV separate all-reduces. Every index is a compile-time constant (templates, not
// loops over shifts), so v stays in registers.
template <int NV>
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[NV], int lane) {
  static_assert(NV >= 1 && NV <= 32 && (NV & (NV - 1)) == 0, "NV must be a power of two <= 32");
  reduce_high_lanes<NV, 16>(v);
  if constexpr (NV > 1) reduce_scatter_stage<NV / 2>(v, lane);
  return v[0];
}

template <typename W, int BT, bool kOnChip>
__global__ void __launch_bounds__(kThreads, 2) lstm_persistent_kernel(const Params prm) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int s_lmax;

  const int B = prm.B, T = prm.T, C = prm.C, P = prm.P;
  const int cpb = prm.cpb, chunks = prm.chunks, ndir = prm.ndir;
  const int units = ndir * chunks;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int NV = 4 * BT;

  // ---- shared memory carve-up (same order and sizes as lstm_smem_bytes) ----
  size_t off = 0;
  W* w_s = nullptr;   // [cpb][4][P]: the gate rows of each own cell, consecutive
  W* wp_s = nullptr;  // [cpb][P]:    W_p^T rows of the own cells
  if (kOnChip) {
    w_s = reinterpret_cast<W*>(smem_raw);
    off += align16(size_t(4) * cpb * P * sizeof(W));
    wp_s = reinterpret_cast<W*>(smem_raw + off);
    off += align16(size_t(cpb) * P * sizeof(W));
  }
  float* h_s = reinterpret_cast<float*>(smem_raw + off);  // [BT][P]
  off += align16(size_t(BT) * P * sizeof(float));
  float* m_s = reinterpret_cast<float*>(smem_raw + off);  // [BT][cpb]

  // ---- longest row over both directions: the number of steps (same value in every CTA) ----
  if (tid == 0) s_lmax = 0;
  __syncthreads();
  {
    int lm = 0;
    for (int d = 0; d < ndir; ++d)
      for (int b = tid; b < B; b += blockDim.x) lm = max(lm, clamp_len(prm.dir[d].lengths[b], T));
    atomicMax(&s_lmax, lm);
  }
  __syncthreads();
  const int lmax = s_lmax;

  // ---- weights on chip, once ----
  if (kOnChip && blockIdx.x < units) {
    const int d = blockIdx.x / chunks, c0 = (blockIdx.x % chunks) * cpb;
    const int nc = min(cpb, C - c0);
    const W* whh = static_cast<const W*>(prm.dir[d].w_hh);
    const W* wpT = static_cast<const W*>(prm.dir[d].w_pT);
    const int rows = 4 * nc;
    for (int idx = tid; idx < rows * P; idx += blockDim.x) {
      const int r = idx / P, k = idx - r * P;
      const int jl = r >> 2, g = r & 3;  // r == wsmem_row(jl, g)
      w_s[idx] = whh[whh_row(g, C, c0 + jl) * P + k];
    }
    for (int idx = tid; idx < nc * P; idx += blockDim.x) wp_s[idx] = wpT[size_t(c0) * P + idx];
  }

  // ---- positions no row reaches: zeros (no step writes them) ----
  {
    const size_t gtid = size_t(blockIdx.x) * blockDim.x + tid;
    const size_t gthreads = size_t(gridDim.x) * blockDim.x;
    const size_t tail = size_t(T - lmax) * P;
    for (int d = 0; d < ndir; ++d) {
      W* out = static_cast<W*>(prm.dir[d].out);
      for (size_t idx = gtid; idx < size_t(B) * tail; idx += gthreads) {
        const size_t b = idx / tail, r = idx - b * tail;
        out[(b * T + lmax) * P + r] = Num<W>::from_f(0.0f);
      }
    }
  }
  __syncthreads();

  for (int s = 0; s < lmax; ++s) {
    // ================= phase A: gates, cell update, partial projection =================
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
      const int d = u / chunks, chunk = u - d * chunks;
      const int c0 = chunk * cpb, nc = min(cpb, C - c0);
      const DirParams& dp = prm.dir[d];
      const W* xproj = static_cast<const W*>(dp.xproj);
      const W* wp = kOnChip ? wp_s : static_cast<const W*>(dp.w_pT) + size_t(c0) * P;
      float* part = prm.partial + size_t(d * chunks + chunk) * B * P;

      for (int b0 = 0; b0 < B; b0 += BT) {
        bool any = false;  // same answer in every thread: the branch below is CTA-uniform
#pragma unroll
        for (int bb = 0; bb < BT; ++bb)
          if (b0 + bb < B && s < clamp_len(dp.lengths[b0 + bb], T)) any = true;
        if (!any) continue;

        for (int idx = tid; idx < BT * P; idx += blockDim.x) {
          const int bb = idx / P, k = idx - bb * P;
          h_s[idx] = (b0 + bb < B) ? __ldcg(dp.h + size_t(b0 + bb) * P + k) : 0.0f;
        }
        __syncthreads();

        for (int jl = warp; jl < nc; jl += kWarps) {
          const int cj = c0 + jl;
          // this lane's element of the reduce-scatter: gate eg of batch row eb; fetch its xproj early
          const int e = rs_slot(lane, NV), eg = e / BT, eb = b0 + (e % BT);  // e == acc_slot(eg, eb - b0)
          float xv = 0.0f;
          if (eb < B) {
            const int L = clamp_len(dp.lengths[eb], T);
            if (s < L) {
              xv = Num<W>::to_f(xproj[xproj_index(eb, step_pos(L, s, dp.reverse), T, C, eg, cj)]);
            }
          }
          const W* rows[4];
#pragma unroll
          for (int g = 0; g < 4; ++g)
            rows[g] = kOnChip ? w_s + size_t(wsmem_row(jl, g)) * P
                              : static_cast<const W*>(dp.w_hh) + whh_row(g, C, cj) * P;

          float acc[NV];
#pragma unroll
          for (int i = 0; i < NV; ++i) acc[i] = 0.0f;
          const int P2 = P >> 1;  // P is even (host check)
          for (int k2 = lane; k2 < P2; k2 += 32) {
            float2 w[4];
#pragma unroll
            for (int g = 0; g < 4; ++g) w[g] = Num<W>::pair(rows[g] + 2 * k2);
#pragma unroll
            for (int bb = 0; bb < BT; ++bb) {
              const float2 hv = *reinterpret_cast<const float2*>(h_s + bb * P + 2 * k2);
#pragma unroll
              for (int g = 0; g < 4; ++g) {
                acc[acc_slot(g, bb, BT)] = fmaf(w[g].x, hv.x, acc[acc_slot(g, bb, BT)]);
                acc[acc_slot(g, bb, BT)] = fmaf(w[g].y, hv.y, acc[acc_slot(g, bb, BT)]);
              }
            }
          }
          const float gate = warp_reduce_scatter<NV>(acc, lane) + xv;
          // lane bb (< BT) collects the four gates of batch row b0 + bb
          const int mb = lane % BT;
          const float gi = __shfl_sync(0xffffffffu, gate, acc_slot(0, mb, BT));
          const float gf = __shfl_sync(0xffffffffu, gate, acc_slot(1, mb, BT));
          const float gg = __shfl_sync(0xffffffffu, gate, acc_slot(2, mb, BT));
          const float go = __shfl_sync(0xffffffffu, gate, acc_slot(3, mb, BT));
          if (lane < BT) {
            const int b = b0 + lane;
            float m = 0.0f;
            if (b < B) {
              const int L = clamp_len(dp.lengths[b], T);
              if (s < L) {
                float* cp = dp.c + size_t(b) * C + cj;
                const float cn = cell_update(gi, gf, gg, *cp, prm.has_cell_clip, prm.cell_clip);
                *cp = cn;
                m = cell_output(go, cn);
              }
            }
            m_s[lane * cpb + jl] = m;
          }
        }
        __syncthreads();

        // partial projection of the own cells: part[b][p] = sum_j m[b][j] * W_p[p][c0 + j]
        for (int p = tid; p < P; p += blockDim.x) {
          float a[BT];
#pragma unroll
          for (int bb = 0; bb < BT; ++bb) a[bb] = 0.0f;
          for (int jl = 0; jl < nc; ++jl) {
            const float w = Num<W>::to_f(wp[size_t(jl) * P + p]);
#pragma unroll
            for (int bb = 0; bb < BT; ++bb) a[bb] = fmaf(m_s[bb * cpb + jl], w, a[bb]);
          }
#pragma unroll
          for (int bb = 0; bb < BT; ++bb)
            if (b0 + bb < B) part[size_t(b0 + bb) * P + p] = a[bb];
        }
        __syncthreads();  // h_s and m_s are rewritten by the next tile
      }
    }
    grid.sync();

    // ================= phase B: reduce partials, clip, write h and out =================
    {
      const size_t gtid = size_t(blockIdx.x) * blockDim.x + tid;
      const size_t groups = size_t(gridDim.x) * blockDim.x / kReduceGroup;
      const int sub = tid % kReduceGroup;
      const size_t BP = size_t(B) * P, nelem = size_t(ndir) * BP;
      for (size_t base = 0; base < nelem; base += groups) {  // same trip count in every lane
        const size_t el = base + gtid / kReduceGroup;
        int d = 0, L = 0;
        size_t b = 0, p = 0;
        bool act = false;
        if (el < nelem) {
          d = int(el / BP);
          const size_t r = el - size_t(d) * BP;
          b = r / P;
          p = r - b * P;
          L = clamp_len(prm.dir[d].lengths[b], T);
          act = s < L;
        }
        float sum = 0.0f;
        if (act) {
          const float* src = prm.partial + size_t(d) * chunks * BP + b * P + p;
          for (int ch = sub; ch < chunks; ch += kReduceGroup) sum += __ldcg(src + size_t(ch) * BP);
        }
#pragma unroll
        for (int o = kReduceGroup / 2; o >= 1; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (el < nelem && sub == 0) {
          const DirParams& dp = prm.dir[d];
          W* out = static_cast<W*>(dp.out);
          if (act) {
            if (prm.has_proj_clip) sum = clip_f(sum, prm.proj_clip);
            dp.h[b * P + p] = sum;
            out[(b * T + step_pos(L, s, dp.reverse)) * P + p] = Num<W>::from_f(sum);
          } else {
            out[(b * T + s) * P + p] = Num<W>::from_f(0.0f);
          }
        }
      }
    }
    grid.sync();
  }
}

}  // namespace elmo_fast
