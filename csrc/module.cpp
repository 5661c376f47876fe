// pybind11 module elmo_fast._lstm_cuda: raw device pointers, sizes and a stream in, no libtorch.
// The Python wrapper (elmo_fast/lstm_cuda.py) checks shapes, dtypes, devices and contiguity
// before any pointer gets here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "lstm_persistent.h"

namespace py = pybind11;
using elmo_fast::LstmLaunch;
using elmo_fast::LstmPlan;

namespace {

py::dict plan_to_dict(const LstmPlan& p) {
  py::dict d;
  d["on_chip"] = bool(p.on_chip);
  d["batch_tile"] = p.batch_tile;
  d["cells_per_unit"] = p.cells_per_unit;
  d["chunks"] = p.chunks;
  d["grid"] = p.grid;
  d["threads"] = p.threads;
  d["blocks_per_sm"] = p.blocks_per_sm;
  d["sms"] = p.sms;
  d["smem_bytes"] = p.smem_bytes;
  d["workspace_bytes"] = p.workspace_bytes;
  return d;
}

void fill(uintptr_t (&dst)[2], const std::vector<uintptr_t>& src, int ndir, const char* name) {
  if (int(src.size()) != ndir) throw py::value_error(std::string(name) + ": expected one pointer per direction");
  dst[0] = src[0];
  dst[1] = ndir > 1 ? src[1] : 0;
}

using Ptrs = std::vector<uintptr_t>;

// The problem, the per-direction pointers and flags, and the clips that `launch` and `emulate` share;
// checks ndir and that every list has one entry per direction. Launch-only fields stay zero.
LstmLaunch make_launch(int dtype, int ndir, int B, int T, int C, int P, const Ptrs& xproj, const Ptrs& w_hh,
                       const Ptrs& w_pT, const Ptrs& lengths, const Ptrs& out, const Ptrs& h, const Ptrs& c,
                       const std::vector<int>& reverse, const py::object& cell_clip,
                       const py::object& proj_clip) {
  LstmLaunch a{};
  a.dtype = dtype;
  a.ndir = ndir;
  a.B = B;
  a.T = T;
  a.C = C;
  a.P = P;
  if (ndir != 1 && ndir != 2) throw py::value_error("ndir must be 1 or 2");
  fill(a.xproj, xproj, ndir, "xproj");
  fill(a.w_hh, w_hh, ndir, "w_hh");
  fill(a.w_pT, w_pT, ndir, "w_pT");
  fill(a.lengths, lengths, ndir, "lengths");
  fill(a.out, out, ndir, "out");
  fill(a.h, h, ndir, "h");
  fill(a.c, c, ndir, "c");
  if (int(reverse.size()) != ndir) throw py::value_error("reverse: expected one flag per direction");
  a.reverse[0] = reverse[0];
  a.reverse[1] = ndir > 1 ? reverse[1] : 0;
  a.has_cell_clip = !cell_clip.is_none();
  a.cell_clip = a.has_cell_clip ? cell_clip.cast<float>() : 0.0f;
  a.has_proj_clip = !proj_clip.is_none();
  a.proj_clip = a.has_proj_clip ? proj_clip.cast<float>() : 0.0f;
  return a;
}

}  // namespace

PYBIND11_MODULE(_lstm_cuda, m) {
  m.doc() = "Persistent projected-LSTM CUDA kernel (elmo_fast). Raw pointers; use elmo_fast.lstm_cuda.";

  m.def(
      "plan",
      [](int dtype, int ndir, int B, int C, int P, int device, int residency) {
        return plan_to_dict(elmo_fast::lstm_plan(dtype, ndir, B, C, P, device, residency));
      },
      py::arg("dtype"), py::arg("ndir"), py::arg("B"), py::arg("C"), py::arg("P"), py::arg("device"),
      py::arg("residency") = -1,
      "Launch plan (grid, cells per CTA, shared memory, workspace bytes) for a problem shape.");

  m.def(
      "launch",
      [](int dtype, int ndir, int B, int T, int C, int P, const std::vector<uintptr_t>& xproj,
         const std::vector<uintptr_t>& w_hh, const std::vector<uintptr_t>& w_pT,
         const std::vector<uintptr_t>& lengths, const std::vector<uintptr_t>& out,
         const std::vector<uintptr_t>& h, const std::vector<uintptr_t>& c, const std::vector<int>& reverse,
         uintptr_t workspace, size_t workspace_bytes, py::object cell_clip, py::object proj_clip,
         uintptr_t stream, int device, int residency) {
        LstmLaunch a = make_launch(dtype, ndir, B, T, C, P, xproj, w_hh, w_pT, lengths, out, h, c, reverse,
                                   cell_clip, proj_clip);
        a.workspace = workspace;
        a.workspace_bytes = workspace_bytes;
        a.stream = stream;
        a.device = device;
        a.residency = residency;
        elmo_fast::lstm_launch(a);  // asynchronous on `stream`
      },
      py::arg("dtype"), py::arg("ndir"), py::arg("B"), py::arg("T"), py::arg("C"), py::arg("P"),
      py::arg("xproj"), py::arg("w_hh"), py::arg("w_pT"), py::arg("lengths"), py::arg("out"), py::arg("h"),
      py::arg("c"), py::arg("reverse"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("cell_clip"), py::arg("proj_clip"), py::arg("stream"), py::arg("device"),
      py::arg("residency") = -1,
      "Runs the layer on `stream` (asynchronous). Pointers are integers (tensor.data_ptr()).");

  // ---- device-free: usable without a GPU (CPU tests of the planner and the indexing) ----
  m.def(
      "plan_model",
      [](int dtype, int ndir, int B, int C, int P, int sms, size_t smem_optin, size_t smem_per_sm,
         int max_blocks_per_sm, int residency, size_t static_smem, size_t reserved_smem) {
        const size_t max_dyn = smem_optin > static_smem ? smem_optin - static_smem : 0;
        return plan_to_dict(elmo_fast::lstm_plan_for(
            dtype, ndir, B, C, P, residency, sms, max_dyn, [&](bool, int, size_t smem) {
              return elmo_fast::lstm_occupancy_model(smem, static_smem, reserved_smem, smem_optin, smem_per_sm,
                                                     max_blocks_per_sm);
            }));
      },
      py::arg("dtype"), py::arg("ndir"), py::arg("B"), py::arg("C"), py::arg("P"), py::arg("sms"),
      py::arg("smem_optin"), py::arg("smem_per_sm"), py::arg("max_blocks_per_sm"), py::arg("residency") = -1,
      py::arg("static_smem") = 16, py::arg("reserved_smem") = 1024,
      "The planner on a modelled device (no CUDA call): occupancy = min(max_blocks_per_sm, "
      "smem_per_sm // (dyn + static + reserved)), 0 above the opt-in limit.");
  m.def("occupancy_model", &elmo_fast::lstm_occupancy_model, py::arg("dyn_smem"), py::arg("static_smem"),
        py::arg("reserved_smem"), py::arg("smem_optin"), py::arg("smem_per_sm"), py::arg("max_blocks_per_sm"));
  m.def("smem_bytes", &elmo_fast::lstm_dyn_smem_bytes, py::arg("on_chip"), py::arg("dtype"), py::arg("bt"),
        py::arg("cpb"), py::arg("P"), "Dynamic shared memory of one CTA (the kernel's carve-up).");
  m.def("batch_tile", &elmo_fast::lstm_batch_tile, py::arg("B"));
  m.def("threads", &elmo_fast::lstm_threads);
  m.def(
      "emulate",
      [](int ndir, int B, int T, int C, int P, const std::vector<uintptr_t>& xproj,
         const std::vector<uintptr_t>& w_hh, const std::vector<uintptr_t>& w_pT,
         const std::vector<uintptr_t>& lengths, const std::vector<uintptr_t>& out,
         const std::vector<uintptr_t>& h, const std::vector<uintptr_t>& c, const std::vector<int>& reverse,
         py::object cell_clip, py::object proj_clip, int cpb, int bt) {
        const LstmLaunch a = make_launch(elmo_fast::kFloat32, ndir, B, T, C, P, xproj, w_hh, w_pT, lengths, out,
                                         h, c, reverse, cell_clip, proj_clip);
        py::gil_scoped_release release;
        elmo_fast::lstm_emulate(a, cpb, bt);
      },
      py::arg("ndir"), py::arg("B"), py::arg("T"), py::arg("C"), py::arg("P"), py::arg("xproj"), py::arg("w_hh"),
      py::arg("w_pT"), py::arg("lengths"), py::arg("out"), py::arg("h"), py::arg("c"), py::arg("reverse"),
      py::arg("cell_clip"), py::arg("proj_clip"), py::arg("cpb"), py::arg("bt"),
      "Host emulation of the kernel on HOST pointers (fp32 CPU tensors' data_ptr()), for CPU tests.");

  m.def("build_info", []() {
    py::dict d;
    d["arch"] = elmo_fast::lstm_build_arch();
    d["cudart_version"] = elmo_fast::lstm_cudart_version();
    return d;
  });
}
