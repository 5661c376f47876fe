// Host API of the persistent projected-LSTM kernel (no CUDA headers: module.cpp includes this).
//
// One launch runs one layer of a projected LSTM (ELMo's LstmCellWithProjection) over every
// timestep, for one direction or for two independent directions at once. See lstm_persistent.cuh
// for the algorithm and lstm_persistent.cu for the launch planning.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace elmo_fast {

enum LstmDtype : int { kFloat32 = 0, kBFloat16 = 1 };

// Where the recurrent weights live during the run.
enum LstmResidency : int { kResidencyAuto = -1, kResidencyGlobal = 0, kResidencyShared = 1 };

struct LstmPlan {
  int on_chip;           // 1: weights in shared memory for the whole run; 0: read from global/L2
  int batch_tile;        // batch rows processed together (1, 2, 4 or 8)
  int cells_per_unit;    // cells owned by one work unit (one CTA in shared-memory mode)
  int chunks;            // ceil(C / cells_per_unit): units per direction
  int grid;              // CTAs launched (all co-resident: cooperative launch)
  int threads;           // threads per CTA
  int blocks_per_sm;     // occupancy the grid was sized from
  int sms;               // multiprocessors on the device
  size_t smem_bytes;     // dynamic shared memory per CTA
  size_t workspace_bytes;  // partial-projection buffer the caller must provide (fp32)
};

struct LstmLaunch {
  int dtype;             // LstmDtype: fp32 everything, or bf16 xproj/weights/out (fp32 state)
  int ndir;              // 1 or 2
  int B, T, C, P;
  // per direction (index 1 ignored when ndir == 1); raw device pointers
  uintptr_t xproj[2];    // [B, T, 4C]  dtype
  uintptr_t w_hh[2];     // [4C, P]     dtype
  uintptr_t w_pT[2];     // [C, P]      dtype (the projection, transposed)
  uintptr_t lengths[2];  // [B]         int32
  uintptr_t out[2];      // [B, T, P]   dtype
  uintptr_t h[2];        // [B, P]      fp32, initial state in, final state out
  uintptr_t c[2];        // [B, C]      fp32, initial state in, final state out
  int reverse[2];
  uintptr_t workspace;   // fp32, plan.workspace_bytes
  size_t workspace_bytes;
  int has_cell_clip, has_proj_clip;
  float cell_clip, proj_clip;
  uintptr_t stream;      // cudaStream_t
  int device;
  int residency;         // LstmResidency
};

// Both throw std::runtime_error (with the CUDA error string) on any failure.
LstmPlan lstm_plan(int dtype, int ndir, int B, int C, int P, int device, int residency);
void lstm_launch(const LstmLaunch& args);

// ---- device-free pieces (no CUDA call: usable and tested on a machine without a GPU) ----

// CTAs per SM of the kernel instance <dtype, bt, on_chip> with dyn_smem dynamic shared memory
// (0: it does not fit). lstm_plan passes cudaOccupancyMaxActiveBlocksPerMultiprocessor.
using LstmOccupancy = std::function<int(bool on_chip, int bt, size_t dyn_smem)>;

// The planner itself. sms: multiprocessors; max_dyn_smem: the largest dynamic shared memory a
// CTA may request (opt-in limit minus the kernel's static shared memory). Throws
// std::runtime_error when no configuration fits.
LstmPlan lstm_plan_for(int dtype, int ndir, int B, int C, int P, int residency, int sms, size_t max_dyn_smem,
                       const LstmOccupancy& occupancy);

// Shared-memory occupancy model for the CPU tests (registers and threads are folded into
// max_blocks_per_sm): 0 if static + dyn > opt-in, else min(max_blocks_per_sm,
// smem_per_sm / (dyn + static + reserved)).
int lstm_occupancy_model(size_t dyn_smem, size_t static_smem, size_t reserved_smem, size_t smem_optin,
                         size_t smem_per_sm, int max_blocks_per_sm);

size_t lstm_dyn_smem_bytes(bool on_chip, int dtype, int bt, int cpb, int P);  // = the kernel's carve-up
int lstm_batch_tile(int B);
int lstm_threads();

// Host emulation of the kernel (fp32 only; every pointer in `a` is a HOST pointer, workspace
// unused): the same units, batch tiles, smem layouts, lane maps, butterfly and reduction order,
// built from the same __host__ __device__ helpers, run sequentially. For CPU tests of the
// indexing; cpb and bt as a plan would choose them (bt in 1, 2, 4, 8).
void lstm_emulate(const LstmLaunch& a, int cpb, int bt);

std::string lstm_build_arch();   // the -gencode targets this library was compiled for
int lstm_cudart_version();       // CUDART_VERSION at compile time

}  // namespace elmo_fast
