"""Where the time of one CPU forward goes, per op family (bench/bench_cpu.py --profile).

torch.profiler records every aten op on the calling thread; the dispatcher labels each op call
(`elmo_fast::char_cnn`, `::highway`, `::bilstm_layer`, `::lstm_layer`, ...) while a profiler runs,
and the reference recurrence labels its GEMMs (`::input_projection`, `::recurrent_gemm`,
`::cell_projection`; the last two may run in our own kernel, which the profiler sees only as the
label's own time).
An op's time is charged to a family by the label around it and, inside the recurrence, by what it
is: a GEMM whose input is P wide is the recurrent GEMM, one whose input is C wide the cell
projection, element-wise ops are the cell update, the rest (index_select, copy_, slicing) is
bookkeeping. Only top-level ops count (an aten::linear's inner addmm is inside its time), and the
wall time no op covers is reported as Python and dispatch. With OpenMP the worker threads record
nothing, but the calling thread waits in every parallel region, so its op times are wall times.
The profiler itself adds a few microseconds per op: the profiled wall time is reported beside the
unprofiled one, so the overhead is visible.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import torch

FAMILIES = ("char CNN", "highway + projection", "input projections", "recurrent GEMMs", "cell projections",
            "cell updates", "copies and bookkeeping", "outside the ops", "Python and dispatch")
GEMMS = {"aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm", "aten::baddbmm",
         "mkldnn::_linear_pointwise"}
ELEMENTWISE = {"aten::sigmoid_", "aten::sigmoid", "aten::tanh_", "aten::tanh", "aten::mul_", "aten::mul",
               "aten::addcmul_", "aten::addcmul", "aten::clamp_", "aten::clamp", "aten::add_", "aten::add",
               "aten::hardtanh_"}
LABEL = "elmo_fast::"
# labels whose own time (outside any aten op inside them) is work of that family: our CPU kernels
LEAF_LABELS = {"recurrent_gemm": "recurrent GEMMs", "cell_projection": "cell projections"}


def family(label: str, name: str, shapes: List[Any], P: int, C: int) -> str:
    """The family of one top-level op `name` (input shapes `shapes`) run under op label `label`."""
    if label == "char_cnn":
        return "char CNN"
    if label == "highway":
        return "highway + projection"
    if label == "input_projection":
        return "input projections"
    if label in LEAF_LABELS:
        return LEAF_LABELS[label]
    gemm = name in GEMMS
    if label == "lstm_layer":
        if gemm:
            width = next((s[-1] for s in shapes if isinstance(s, (list, tuple)) and len(s) == 2), None)
            if width == C:
                return "cell projections"
            return "recurrent GEMMs" if width == P else "copies and bookkeeping"
        return "cell updates" if name in ELEMENTWISE else "copies and bookkeeping"
    if label == "bilstm_layer":
        return "input projections" if gemm else "copies and bookkeeping"
    return "outside the ops"


def profile_call(fn: Callable[[], Any], P: int, C: int) -> Dict[str, Any]:
    """Runs fn once unprofiled (its wall time) and once under torch.profiler; returns seconds per family
    (FAMILIES), the profiled and unprofiled wall times, and the top-level op count."""
    t = time.perf_counter()
    fn()
    plain = time.perf_counter() - t
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    seconds = dict.fromkeys(FAMILIES, 0.0)
    ops = 0
    for ev in prof.events():
        if ev.name.startswith(LABEL):
            fam = LEAF_LABELS.get(ev.name[len(LABEL):])
            if fam is not None:
                seconds[fam] += ev.self_cpu_time_total / 1e6
            continue
        parent = ev.cpu_parent
        if parent is not None and not parent.name.startswith(LABEL):
            continue                      # inside another op: counted in that op's time
        label = ""
        p = parent
        while p is not None:              # the innermost op label around this op
            if p.name.startswith(LABEL):
                label = p.name[len(LABEL):]
                break
            p = p.cpu_parent
        seconds[family(label, ev.name, ev.input_shapes or [], P, C)] += ev.cpu_time_total / 1e6
        ops += 1
    seconds["Python and dispatch"] = max(0.0, wall - sum(seconds.values()))
    return {"seconds": seconds, "profiled_wall_s": wall, "unprofiled_wall_s": plain, "top_level_ops": ops}
