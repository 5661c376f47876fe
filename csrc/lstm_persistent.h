// Host API of the persistent projected-LSTM kernel (no CUDA headers: module.cpp includes this).
//
// One launch runs one layer of a projected LSTM (ELMo's LstmCellWithProjection) over every
// timestep, for one direction or for two independent directions at once. See lstm_persistent.cuh
// for the algorithm and lstm_persistent.cu for the launch planning.
#pragma once

#include <cstddef>
#include <cstdint>
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

std::string lstm_build_arch();   // the -gencode targets this library was compiled for
int lstm_cudart_version();       // CUDART_VERSION at compile time

}  // namespace elmo_fast
