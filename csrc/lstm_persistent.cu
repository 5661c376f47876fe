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

// CTAs of `kernel` that fit on one SM with `smem` dynamic shared memory (0 if none).
int occupancy(const void* kernel, size_t smem, int smem_optin) {
  if (smem > size_t(smem_optin)) return 0;
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
    const void* k = kernel_for(dtype, bt, true);
    // pass 1: one CTA per SM, the fewest cells per CTA that cover C with <= SMs units
    // pass 2: several CTAs per SM
    for (int pass = 0; pass < 2; ++pass) {
      for (int cpb = std::min(8, C);; cpb = std::min(cpb + 8, C)) {
        const int units = ndir * ceil_div(C, cpb);
        const size_t smem = lstm_smem_bytes(true, wbytes, bt, cpb, P);
        if (smem > size_t(optin)) break;  // grows with cpb
        if (pass == 0 ? units <= sms : true) {
          const int occ = occupancy(k, smem, optin);
          if (occ >= 1 && units <= (pass == 0 ? sms : occ * sms)) return finish(true, cpb, occ, smem);
        }
        if (cpb == C) break;
      }
    }
    if (residency == kResidencyShared) fail("the weights do not fit in shared memory for this shape");
  }
  // global mode: weights stay in global memory (served from L2 after the first step)
  const void* k = kernel_for(dtype, bt, false);
  int cpb = std::min(C, std::max(8, ceil_div(ceil_div(ndir * C, sms), 8) * 8));
  for (;;) {
    const size_t smem = lstm_smem_bytes(false, wbytes, bt, cpb, P);
    const int occ = occupancy(k, smem, optin);
    if (occ >= 1) return finish(false, cpb, occ, smem);
    if (cpb <= 8) break;
    cpb = std::max(8, cpb / 2);
  }
  std::ostringstream msg;
  msg << "no launch configuration fits this device (P=" << P << " needs "
      << lstm_smem_bytes(false, wbytes, bt, 8, P) << " B of shared memory per CTA, limit " << optin << ")";
  fail(msg.str());
  return plan;
}

std::mutex g_mutex;
std::map<std::tuple<int, int, int, int, int, int, int>, LstmPlan> g_plans;

}  // namespace

LstmPlan lstm_plan(int dtype, int ndir, int B, int C, int P, int device, int residency) {
  if (dtype != kFloat32 && dtype != kBFloat16) fail("dtype must be 0 (float32) or 1 (bfloat16)");
  if (ndir != 1 && ndir != 2) fail("ndir must be 1 or 2");
  if (B < 1 || C < 1 || P < 2 || (P & 1)) fail("need B >= 1, C >= 1 and an even P >= 2");
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

std::string lstm_build_arch() { return ELMO_FAST_CUDA_ARCH_STR; }
int lstm_cudart_version() { return CUDART_VERSION; }

}  // namespace elmo_fast
