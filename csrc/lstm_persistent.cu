// Launch planning and cooperative launch of the persistent projected-LSTM kernel.
#include "lstm_persistent.cuh"
#include "lstm_persistent.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>
#include <cmath>

#ifndef ELMO_FAST_CUDA_ARCH_STR
#define ELMO_FAST_CUDA_ARCH_STR "unknown"
#endif

namespace elmo_fast {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a sticky non-fatal error so the next call starts clean
    std::ostringstream msg;
    msg << "elmo_fast._lstm_cuda: " << what << " failed: " << cudaGetErrorName(err) << " ("
        << cudaGetErrorString(err) << ")";
    throw std::runtime_error(msg.str());
  }
}

void fail(const std::string& what) { throw std::runtime_error("elmo_fast._lstm_cuda: " + what); }

// Makes `device` current for the lifetime of the guard and restores the previous one.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev), "cudaGetDevice");
    if (prev != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev) cudaSetDevice(prev);
  }
};

template <typename W, int BT, bool kOnChip>
const void* kernel_of() {
  return reinterpret_cast<const void*>(&lstm_persistent_kernel<W, BT, kOnChip>);
}

template <typename W, bool kOnChip>
const void* kernel_bt(int bt) {
  switch (bt) {
    case 1: return kernel_of<W, 1, kOnChip>();
    case 2: return kernel_of<W, 2, kOnChip>();
    case 4: return kernel_of<W, 4, kOnChip>();
    default: return kernel_of<W, 8, kOnChip>();
  }
}

const void* kernel_for(int dtype, int bt, bool on_chip) {
  if (dtype == kFloat32) return on_chip ? kernel_bt<float, true>(bt) : kernel_bt<float, false>(bt);
  return on_chip ? kernel_bt<__nv_bfloat16, true>(bt) : kernel_bt<__nv_bfloat16, false>(bt);
}

int batch_tile(int B) { return B >= 5 ? 8 : (B >= 3 ? 4 : (B == 2 ? 2 : 1)); }

int ceil_div(int a, int b) { return (a + b - 1) / b; }

void check_problem(int dtype, int ndir, int B, int C, int P) {
  if (dtype != kFloat32 && dtype != kBFloat16) fail("dtype must be 0 (float32) or 1 (bfloat16)");
  if (ndir != 1 && ndir != 2) fail("ndir must be 1 or 2");
  if (B < 1 || C < 1 || P < 2 || (P & 1)) fail("need B >= 1, C >= 1 and an even P >= 2");
}

// Largest static shared memory of the kernel instances a plan may pick for this dtype and tile.
size_t static_smem(int dtype, int bt) {
  size_t n = 0;
  for (bool on_chip : {true, false}) {
    cudaFuncAttributes attr{};
    check(cudaFuncGetAttributes(&attr, kernel_for(dtype, bt, on_chip)), "cudaFuncGetAttributes");
    n = std::max(n, attr.sharedSizeBytes);
  }
  return n;
}

// CTAs of `kernel` that fit on one SM with `smem` dynamic shared memory (0 if none). The opt-in
// attribute is set first: the occupancy query and the launch both see the real limit.
int occupancy(const void* kernel, size_t smem, size_t max_dyn_smem) {
  if (smem > max_dyn_smem) return 0;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  int blocks = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return blocks;
}

LstmPlan make_plan(int dtype, int ndir, int B, int C, int P, int device, int residency) {
  int sms = 0, coop = 0, optin = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute(SMs)");
  check(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device),
        "cudaDeviceGetAttribute(CooperativeLaunch)");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  if (!coop) fail("this device does not support cooperative launches (needed for the grid barrier)");
  // static + dynamic shared memory must stay within the opt-in limit (cudaFuncSetAttribute)
  const size_t stat = static_smem(dtype, batch_tile(B));
  const size_t max_dyn = size_t(optin) > stat ? size_t(optin) - stat : 0;
  return lstm_plan_for(dtype, ndir, B, C, P, residency, sms, max_dyn, [&](bool on_chip, int bt, size_t smem) {
    return occupancy(kernel_for(dtype, bt, on_chip), smem, max_dyn);
  });
}

std::mutex g_mutex;
std::map<std::tuple<int, int, int, int, int, int, int>, LstmPlan> g_plans;

}  // namespace

LstmPlan lstm_plan(int dtype, int ndir, int B, int C, int P, int device, int residency) {
  check_problem(dtype, ndir, B, C, P);
  const auto key = std::make_tuple(dtype, ndir, batch_tile(B), C, P, device, residency);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_plans.find(key);
    if (it != g_plans.end()) {
      LstmPlan plan = it->second;
      plan.workspace_bytes = size_t(ndir) * plan.chunks * size_t(B) * P * sizeof(float);
      return plan;
    }
  }
  DeviceGuard guard(device);
  LstmPlan plan = make_plan(dtype, ndir, B, C, P, device, residency);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_plans[key] = plan;
  return plan;
}

void lstm_launch(const LstmLaunch& a) {
  const LstmPlan plan = lstm_plan(a.dtype, a.ndir, a.B, a.C, a.P, a.device, a.residency);
  if (a.T < 1) fail("T must be >= 1");
  if (a.workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes && !a.workspace))
    fail("workspace too small: need " + std::to_string(plan.workspace_bytes) + " bytes");
  for (int d = 0; d < a.ndir; ++d) {
    const uintptr_t ptrs[] = {a.xproj[d], a.w_hh[d], a.w_pT[d], a.lengths[d], a.out[d], a.h[d], a.c[d]};
    for (uintptr_t p : ptrs)
      if (p == 0 || (p & 15)) fail("every tensor pointer must be non-null and 16-byte aligned");
  }
  if (plan.on_chip && plan.grid < a.ndir * plan.chunks)
    fail("internal: on-chip plan with fewer CTAs than units");  // each CTA holds one unit's weights
  if ((a.has_cell_clip && !(a.cell_clip >= 0.0f)) || (a.has_proj_clip && !(a.proj_clip >= 0.0f)))
    fail("clip values must be >= 0");

  Params prm{};
  for (int d = 0; d < 2; ++d) {
    const int s = d < a.ndir ? d : 0;  // an unused second slot mirrors the first (never read)
    prm.dir[d].xproj = reinterpret_cast<const void*>(a.xproj[s]);
    prm.dir[d].w_hh = reinterpret_cast<const void*>(a.w_hh[s]);
    prm.dir[d].w_pT = reinterpret_cast<const void*>(a.w_pT[s]);
    prm.dir[d].lengths = reinterpret_cast<const int*>(a.lengths[s]);
    prm.dir[d].out = reinterpret_cast<void*>(a.out[s]);
    prm.dir[d].h = reinterpret_cast<float*>(a.h[s]);
    prm.dir[d].c = reinterpret_cast<float*>(a.c[s]);
    prm.dir[d].reverse = a.reverse[s] ? 1 : 0;
  }
  prm.ndir = a.ndir;
  prm.B = a.B;
  prm.T = a.T;
  prm.C = a.C;
  prm.P = a.P;
  prm.cpb = plan.cells_per_unit;
  prm.chunks = plan.chunks;
  prm.has_cell_clip = a.has_cell_clip ? 1 : 0;
  prm.has_proj_clip = a.has_proj_clip ? 1 : 0;
  prm.cell_clip = a.cell_clip;
  prm.proj_clip = a.proj_clip;
  prm.partial = reinterpret_cast<float*>(a.workspace);

  DeviceGuard guard(a.device);
  const void* kernel = kernel_for(a.dtype, plan.batch_tile, plan.on_chip != 0);
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem_bytes)),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  void* args[] = {&prm};
  check(cudaLaunchCooperativeKernel(kernel, dim3(plan.grid), dim3(plan.threads), args, plan.smem_bytes,
                                    reinterpret_cast<cudaStream_t>(a.stream)),
        "cudaLaunchCooperativeKernel");
  check(cudaGetLastError(), "lstm_persistent_kernel launch");
}

LstmPlan lstm_plan_for(int dtype, int ndir, int B, int C, int P, int residency, int sms, size_t max_dyn_smem,
                       const LstmOccupancy& occupancy) {
  check_problem(dtype, ndir, B, C, P);
  if (sms < 1) fail("need at least one multiprocessor");
  if (residency != kResidencyAuto && residency != kResidencyGlobal && residency != kResidencyShared)
    fail("residency must be -1 (auto), 0 (global) or 1 (shared)");
  const size_t wbytes = dtype == kFloat32 ? 4 : 2;
  const int bt = batch_tile(B);
  LstmPlan plan{};
  plan.batch_tile = bt;
  plan.threads = kThreads;
  plan.sms = sms;

  auto finish = [&](bool on_chip, int cpb, int blocks_per_sm, size_t smem) {
    plan.on_chip = on_chip ? 1 : 0;
    plan.cells_per_unit = cpb;
    plan.chunks = ceil_div(C, cpb);
    plan.blocks_per_sm = blocks_per_sm;
    plan.smem_bytes = smem;
    const int units = ndir * plan.chunks;
    // every CTA must be co-resident (the grid barrier waits for all of them): never above
    // occupancy x SMs; at least one CTA per SM so phase B has threads to spare.
    plan.grid = std::min(blocks_per_sm * sms, std::max(units, sms));
    plan.workspace_bytes = size_t(ndir) * plan.chunks * size_t(B) * P * sizeof(float);
    return plan;
  };

  if (residency != kResidencyGlobal) {
    // pass 1: one CTA per SM, the fewest cells per CTA that cover C with <= SMs units
    // pass 2: several CTAs per SM
    for (int pass = 0; pass < 2; ++pass) {
      for (int cpb = std::min(8, C);; cpb = std::min(cpb + 8, C)) {
        const int units = ndir * ceil_div(C, cpb);
        const size_t smem = lstm_smem_bytes(true, wbytes, bt, cpb, P);
        if (smem > max_dyn_smem) break;  // grows with cpb
        if (pass == 0 ? units <= sms : true) {
          const int occ = occupancy(true, bt, smem);
          if (occ >= 1 && units <= (pass == 0 ? sms : occ * sms)) return finish(true, cpb, occ, smem);
        }
        if (cpb == C) break;
      }
    }
    if (residency == kResidencyShared) fail("the weights do not fit in shared memory for this shape");
  }
  // global mode: weights stay in global memory (served from L2 after the first step)
  int cpb = std::min(C, std::max(8, ceil_div(ceil_div(ndir * C, sms), 8) * 8));
  for (;;) {
    const size_t smem = lstm_smem_bytes(false, wbytes, bt, cpb, P);
    const int occ = occupancy(false, bt, smem);
    if (occ >= 1) return finish(false, cpb, occ, smem);
    if (cpb <= 8) break;
    cpb = std::max(8, cpb / 2);
  }
  std::ostringstream msg;
  msg << "no launch configuration fits this device (P=" << P << " needs "
      << lstm_smem_bytes(false, wbytes, bt, std::min(C, 8), P) << " B of shared memory per CTA, limit "
      << max_dyn_smem << ")";
  fail(msg.str());
  return plan;
}

int lstm_occupancy_model(size_t dyn_smem, size_t static_smem, size_t reserved_smem, size_t smem_optin,
                         size_t smem_per_sm, int max_blocks_per_sm) {
  if (dyn_smem + static_smem > smem_optin) return 0;
  const size_t per_cta = dyn_smem + static_smem + reserved_smem;
  return int(std::min<size_t>(size_t(std::max(0, max_blocks_per_sm)), smem_per_sm / per_cta));
}

size_t lstm_dyn_smem_bytes(bool on_chip, int dtype, int bt, int cpb, int P) {
  return lstm_smem_bytes(on_chip, dtype == kFloat32 ? 4 : 2, bt, cpb, P);
}
int lstm_batch_tile(int B) { return batch_tile(B); }
int lstm_threads() { return kThreads; }

namespace {
// Lock-step emulation of warp_reduce_scatter<NV> on 32 lanes (v: [32][NV], lane-major).
void warp_reduce_scatter_host(std::vector<float>& v, int NV) {
  std::vector<float> nv(v.size());
  for (int S = 16; S >= NV; S >>= 1) {  // reduce_high_lanes
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < NV; ++i) nv[l * NV + i] = v[l * NV + i] + v[(l ^ S) * NV + i];
    v.swap(nv);
  }
  std::vector<float> send(v.size()), keep(v.size());
  for (int S = NV / 2; S >= 1; S >>= 1) {  // reduce_scatter_stage<S>
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < S; ++i)
        rs_pick((l & S) != 0, v[l * NV + i], v[l * NV + i + S], send[l * NV + i], keep[l * NV + i]);
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < S; ++i) v[l * NV + i] = keep[l * NV + i] + send[(l ^ S) * NV + i];
  }
}
}  // namespace

void lstm_emulate(const LstmLaunch& a, int cpb, int bt) {
  check_problem(a.dtype, a.ndir, a.B, a.C, a.P);
  if (a.dtype != kFloat32) fail("lstm_emulate: float32 only");
  if (bt != 1 && bt != 2 && bt != 4 && bt != 8) fail("lstm_emulate: bt must be 1, 2, 4 or 8");
  if (cpb < 1 || a.T < 1) fail("lstm_emulate: need cpb >= 1 and T >= 1");
  struct Dir {
    const float *x, *whh, *wpT;
    const int* len;
    float *out, *h, *c;
    int rev;
  } dir[2];
  for (int d = 0; d < a.ndir; ++d)
    dir[d] = {reinterpret_cast<const float*>(a.xproj[d]), reinterpret_cast<const float*>(a.w_hh[d]),
              reinterpret_cast<const float*>(a.w_pT[d]), reinterpret_cast<const int*>(a.lengths[d]),
              reinterpret_cast<float*>(a.out[d]), reinterpret_cast<float*>(a.h[d]),
              reinterpret_cast<float*>(a.c[d]), a.reverse[d] ? 1 : 0};
  const int B = a.B, T = a.T, C = a.C, P = a.P, ndir = a.ndir, NV = 4 * bt;
  const int chunks = ceil_div(C, cpb), units = ndir * chunks;
  const size_t BP = size_t(B) * P;
  std::vector<float> partial(size_t(units) * BP, std::nanf(""));  // unwritten entries poison a read
  int lmax = 0;
  for (int d = 0; d < ndir; ++d)
    for (int b = 0; b < B; ++b) lmax = std::max(lmax, clamp_len(dir[d].len[b], T));
  for (int d = 0; d < ndir; ++d)
    for (size_t b = 0; b < size_t(B); ++b)
      for (size_t r = 0; r < size_t(T - lmax) * P; ++r) dir[d].out[(b * T + lmax) * P + r] = 0.0f;

  std::vector<float> h_s(size_t(bt) * P), m_s(size_t(bt) * cpb), v(32 * NV), gate(32);
  for (int s = 0; s < lmax; ++s) {
    // phase A
    for (int u = 0; u < units; ++u) {
      const int d = u / chunks, chunk = u - d * chunks;
      const int c0 = chunk * cpb, nc = std::min(cpb, C - c0);
      const Dir& dp = dir[d];
      float* part = partial.data() + size_t(d * chunks + chunk) * BP;
      for (int b0 = 0; b0 < B; b0 += bt) {
        bool any = false;
        for (int bb = 0; bb < bt; ++bb)
          if (b0 + bb < B && s < clamp_len(dp.len[b0 + bb], T)) any = true;
        if (!any) continue;
        for (int idx = 0; idx < bt * P; ++idx) {
          const int bb = idx / P, k = idx - bb * P;
          h_s[idx] = (b0 + bb < B) ? dp.h[size_t(b0 + bb) * P + k] : 0.0f;
        }
        for (int jl = 0; jl < nc; ++jl) {
          const int cj = c0 + jl;
          for (int lane = 0; lane < 32; ++lane) {
            float* acc = &v[lane * NV];
            for (int i = 0; i < NV; ++i) acc[i] = 0.0f;
            for (int k2 = lane; k2 < P / 2; k2 += 32)
              for (int bb = 0; bb < bt; ++bb)
                for (int g = 0; g < 4; ++g) {
                  const float* row = dp.whh + whh_row(g, C, cj) * P + 2 * k2;  // == w_s row wsmem_row(jl, g)
                  const float* hv = &h_s[size_t(bb) * P + 2 * k2];
                  acc[acc_slot(g, bb, bt)] = fmaf(row[0], hv[0], acc[acc_slot(g, bb, bt)]);
                  acc[acc_slot(g, bb, bt)] = fmaf(row[1], hv[1], acc[acc_slot(g, bb, bt)]);
                }
          }
          warp_reduce_scatter_host(v, NV);
          for (int lane = 0; lane < 32; ++lane) {
            const int e = rs_slot(lane, NV), eg = e / bt, eb = b0 + (e % bt);
            float xv = 0.0f;
            if (eb < B) {
              const int L = clamp_len(dp.len[eb], T);
              if (s < L) xv = dp.x[xproj_index(eb, step_pos(L, s, dp.rev), T, C, eg, cj)];
            }
            gate[lane] = v[lane * NV] + xv;
          }
          for (int lane = 0; lane < bt; ++lane) {
            const int mb = lane % bt, b = b0 + lane;
            float m = 0.0f;
            if (b < B) {
              const int L = clamp_len(dp.len[b], T);
              if (s < L) {
                float* cp = dp.c + size_t(b) * C + cj;
                const float cn = cell_update(gate[acc_slot(0, mb, bt)], gate[acc_slot(1, mb, bt)],
                                             gate[acc_slot(2, mb, bt)], *cp, a.has_cell_clip, a.cell_clip);
                *cp = cn;
                m = cell_output(gate[acc_slot(3, mb, bt)], cn);
              }
            }
            m_s[size_t(lane) * cpb + jl] = m;
          }
        }
        const float* wp = dp.wpT + size_t(c0) * P;
        for (int p = 0; p < P; ++p) {
          float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          for (int jl = 0; jl < nc; ++jl) {
            const float w = wp[size_t(jl) * P + p];
            for (int bb = 0; bb < bt; ++bb) acc[bb] = fmaf(m_s[size_t(bb) * cpb + jl], w, acc[bb]);
          }
          for (int bb = 0; bb < bt; ++bb)
            if (b0 + bb < B) part[size_t(b0 + bb) * P + p] = acc[bb];
        }
      }
    }
    // phase B
    for (int d = 0; d < ndir; ++d) {
      const Dir& dp = dir[d];
      for (size_t b = 0; b < size_t(B); ++b) {
        const int L = clamp_len(dp.len[b], T);
        for (size_t p = 0; p < size_t(P); ++p) {
          if (s < L) {
            float sub[kReduceGroup] = {};
            const float* src = partial.data() + size_t(d) * chunks * BP + b * P + p;
            for (int ch = 0; ch < chunks; ++ch) sub[ch % kReduceGroup] += src[size_t(ch) * BP];
            for (int o = kReduceGroup / 2; o >= 1; o >>= 1) {
              float nx[kReduceGroup];
              for (int i = 0; i < kReduceGroup; ++i) nx[i] = sub[i] + sub[i ^ o];
              std::copy(nx, nx + kReduceGroup, sub);
            }
            float sum = sub[0];
            if (a.has_proj_clip) sum = clip_f(sum, a.proj_clip);
            dp.h[b * P + p] = sum;
            dp.out[(b * T + step_pos(L, s, dp.rev)) * P + p] = sum;
          } else {
            dp.out[(b * T + s) * P + p] = 0.0f;
          }
        }
      }
    }
  }
}

std::string lstm_build_arch() { return ELMO_FAST_CUDA_ARCH_STR; }
int lstm_cudart_version() { return CUDART_VERSION; }

}  // namespace elmo_fast
