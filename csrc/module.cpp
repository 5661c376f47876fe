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
        a.workspace = workspace;
        a.workspace_bytes = workspace_bytes;
        a.has_cell_clip = !cell_clip.is_none();
        a.cell_clip = a.has_cell_clip ? cell_clip.cast<float>() : 0.0f;
        a.has_proj_clip = !proj_clip.is_none();
        a.proj_clip = a.has_proj_clip ? proj_clip.cast<float>() : 0.0f;
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

  m.def("build_info", []() {
    py::dict d;
    d["arch"] = elmo_fast::lstm_build_arch();
    d["cudart_version"] = elmo_fast::lstm_cudart_version();
    return d;
  });
}
