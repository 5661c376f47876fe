"""Persistent projected-LSTM CUDA extension (csrc/, elmo_fast/lstm_cuda.py).

On any machine with nvcc: the extension compiles and imports; the wrapper's argument checks raise
clear errors without a pointer crossing; the support rules say why the backend cannot run on a
CPU machine. On a GPU (marked gpu): the kernel against the fp64 reference at every model shape.
"""
import importlib.util

import pytest
import torch

from _lstm_clip import CELL_CLIP, PROJ_CLIP, clipped_reference
from _lstm_inputs import make_inputs
from elmo_fast import _lstm_ext, lstm_cuda
from elmo_fast.reference.lstm import lstm_layer_ref
from tolerances import ERR_RATIO, assert_close, assert_differs, assert_lowp_close, err_ratio

NAMES = ("xproj", "w_hh", "w_p", "lengths", "h0", "c0")


# ---------------------------------------------------------------------------------------------
# Build and import (CPU CI)
# ---------------------------------------------------------------------------------------------
def test_extension_compiles_with_nvcc(tmp_path):
    src = _lstm_ext.csrc_dir()
    if src is None:
        pytest.skip("the CUDA sources (csrc/) are not shipped with this installation")
    if _lstm_ext.nvcc_build_module(src).find_nvcc() is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH): cannot compile the extension")
    so = _lstm_ext.build_extension(out_dir=tmp_path, archs="90")
    spec = importlib.util.spec_from_file_location("elmo_fast._lstm_cuda", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = module.build_info()
    assert info["arch"] == "90" and info["cudart_version"] >= 12000
    assert {"plan", "launch", "build_info"} <= set(dir(module))


def test_prebuilt_extension_imports():
    if importlib.util.find_spec("elmo_fast._lstm_cuda") is None:
        pytest.skip("elmo_fast._lstm_cuda not built (pip install -e . on a machine with nvcc): "
                    + lstm_cuda.extension_status())
    import elmo_fast._lstm_cuda as ext

    assert "arch" in ext.build_info()
    assert lstm_cuda.extension_status().startswith("built")


def test_extension_status_is_a_line():
    status = lstm_cuda.extension_status()
    assert isinstance(status, str) and status and "\n" not in status


# ---------------------------------------------------------------------------------------------
# Argument checks: errors name the argument; nothing reaches the extension
# ---------------------------------------------------------------------------------------------
def _args(**over):
    args = dict(zip(NAMES, make_inputs(3, 5, 8, 4, [5, 1, 0])))
    args.update(over)
    return args


@pytest.mark.parametrize("change,exc,word", [
    pytest.param({}, ValueError, "xproj is on cpu", id="cpu-tensors"),
    pytest.param({"w_hh": torch.zeros(31, 4)}, ValueError, "w_hh", id="w_hh-shape"),
    pytest.param({"w_p": torch.zeros(4, 9)}, ValueError, "w_p", id="w_p-shape"),
    pytest.param({"c0": torch.zeros(3, 7)}, ValueError, "c0", id="c0-shape"),
    pytest.param({"lengths": torch.zeros(2, dtype=torch.int64)}, ValueError, "lengths", id="lengths-shape"),
    pytest.param({"xproj": torch.zeros(3, 5, 30)}, ValueError, "4*C", id="xproj-not-4C"),
    pytest.param({"xproj": torch.zeros(3, 5)}, ValueError, "xproj", id="xproj-2d"),
    pytest.param({"w_p": torch.zeros(4, 8, dtype=torch.bfloat16)}, TypeError, "w_p", id="w_p-dtype"),
    pytest.param({"xproj": torch.zeros(3, 5, 32, dtype=torch.float16)}, TypeError, "xproj", id="fp16"),
    pytest.param({"lengths": torch.zeros(3)}, TypeError, "lengths", id="lengths-float"),
    pytest.param({"h0": [0.0]}, TypeError, "h0", id="h0-not-tensor"),
])
def test_wrapper_rejects_bad_arguments(change, exc, word):
    with pytest.raises(exc, match=word):
        lstm_cuda.lstm_layer_cuda(**_args(**change))


def test_wrapper_rejects_odd_projection():
    args = dict(zip(NAMES, make_inputs(2, 3, 8, 5, [3, 1])))
    with pytest.raises(ValueError, match="even projection size"):
        lstm_cuda.lstm_layer_cuda(**args)


def test_wrapper_rejects_bad_clip():
    with pytest.raises(ValueError, match="cell_clip"):
        lstm_cuda.lstm_layer_cuda(**_args(), cell_clip=-1.0)


def test_raw_launcher_requires_contiguous():
    """The layer behind the custom op takes only contiguous tensors (the public wrapper copies)."""
    args = _args(w_hh=torch.zeros(4, 32).t())
    with pytest.raises(ValueError, match="w_hh must be contiguous"):
        lstm_cuda._check_args(*args.values(), None, None, need_contiguous=True, need_cuda=False)


def test_fake_impl_gives_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        args = [torch.empty(2, 7, 32, dtype=torch.bfloat16), torch.empty(32, 4, dtype=torch.bfloat16),
                torch.empty(4, 8, dtype=torch.bfloat16), torch.empty(2, dtype=torch.int64),
                torch.empty(2, 4), torch.empty(2, 8)]
        out, h, c = torch.ops.elmo_fast.lstm_layer(*args, 3.0, None, True)
    assert out.shape == (2, 7, 4) and out.dtype == torch.bfloat16
    assert h.shape == (2, 4) and c.shape == (2, 8) and h.dtype == torch.float32


def test_not_supported_reasons_on_cpu():
    reasons = lstm_cuda.not_supported_reasons(_args(), forced=False)
    assert any("cpu" in r for r in reasons), reasons
    if not torch.cuda.is_available():
        assert any("no CUDA device" in r for r in reasons), reasons
    # shape problems are reasons too, never exceptions
    reasons = lstm_cuda.not_supported_reasons(_args(w_p=torch.zeros(4, 9)), forced=True)
    assert any("w_p" in r for r in reasons), reasons


def test_dispatcher_skips_cuda_on_cpu():
    from elmo_fast.ops.lstm import _op

    choice = dict(_op.explain(**_args()))
    assert choice["cuda"], "the CUDA backend must give reasons on a CPU machine"


# ---------------------------------------------------------------------------------------------
# Device-free pieces of the extension (CPU CI): the planner on modelled devices, and a host
# emulation of the kernel built from the kernel's own index/arithmetic helpers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    """The extension: the prebuilt one when it is current, else compiled into a temp dir."""
    try:
        import elmo_fast._lstm_cuda as mod
        if hasattr(mod, "plan_model") and hasattr(mod, "emulate"):
            return mod
    except ImportError:
        pass
    src = _lstm_ext.csrc_dir()
    if src is None or _lstm_ext.nvcc_build_module(src).find_nvcc() is None:
        pytest.skip("no current prebuilt elmo_fast._lstm_cuda and no nvcc to build it")
    so = _lstm_ext.build_extension(out_dir=tmp_path_factory.mktemp("lstm_ext"), archs="90")
    spec = importlib.util.spec_from_file_location("elmo_fast._lstm_cuda", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# (sms, opt-in smem per CTA, smem per SM, CTAs per SM allowed by registers/threads)
DEVICES = {
    "H100": (132, 232448, 233472, 2),
    "H200": (132, 232448, 233472, 2),
    "A100": (108, 166912, 167936, 2),
    "tiny": (4, 49152, 65536, 1),
}
MODEL_SHAPES = [(64, 16), (1024, 128), (2048, 256), (4096, 512), (24, 8), (40, 6), (8, 2), (3, 4),
                (100, 30), (4096, 4096)]
BATCHES = [1, 2, 3, 4, 5, 7, 8, 9, 63, 256, 1000, 1024]


def model_plan(ext, dev, dtype, ndir, B, C, P, residency=-1):
    sms, optin, per_sm, maxb = DEVICES[dev]
    return ext.plan_model(dtype, ndir, B, C, P, sms, optin, per_sm, maxb, residency)


@pytest.mark.parametrize("dev", sorted(DEVICES))
def test_planner_invariants_every_shape(ext, dev):
    """Every shape gets a plan whose CTAs are all co-resident (no grid-barrier deadlock), whose
    shared memory is what the kernel carves up and within the limits, and whose workspace matches
    the partials' indexing; on-chip plans have one CTA per unit."""
    sms, optin, per_sm, maxb = DEVICES[dev]
    for C, P in MODEL_SHAPES:
        for dtype in (0, 1):
            for ndir in (1, 2):
                for B in BATCHES:
                    for residency in (-1, 0, 1):
                        try:
                            p = model_plan(ext, dev, dtype, ndir, B, C, P, residency)
                        except RuntimeError as exc:
                            # only a forced on-chip residency, or P beyond any h tile, may refuse
                            assert residency == 1 or 8 * P * 4 > optin, (dev, C, P, dtype, ndir, B, exc)
                            assert "shared memory" in str(exc)
                            continue
                        where = (dev, C, P, dtype, ndir, B, residency, p)
                        bt = p["batch_tile"]
                        assert bt == ext.batch_tile(B) and bt in (1, 2, 4, 8), where
                        assert 1 <= p["cells_per_unit"] <= C, where
                        assert p["chunks"] == -(-C // p["cells_per_unit"]), where
                        units = ndir * p["chunks"]
                        occ = ext.occupancy_model(p["smem_bytes"], 16, 1024, optin, per_sm, maxb)
                        assert p["blocks_per_sm"] == occ >= 1, where
                        assert 1 <= p["grid"] <= occ * sms, where  # co-resident: cooperative launch
                        assert p["grid"] >= min(units, sms), where
                        assert p["smem_bytes"] == ext.smem_bytes(p["on_chip"], dtype, bt,
                                                                 p["cells_per_unit"], P)
                        assert p["smem_bytes"] + 16 <= optin, where
                        assert p["workspace_bytes"] == ndir * p["chunks"] * B * P * 4, where
                        assert p["threads"] == ext.threads() == 256 and p["sms"] == sms
                        if p["on_chip"]:
                            assert p["grid"] >= units, where  # each CTA holds one unit's weights
                        assert p["on_chip"] == (residency == 1) or residency == -1, where


def test_planner_expected_choices_h100(ext):
    """The budget table of bench/NOTES.md (LSTM, issue 4)."""
    def plan(dtype, ndir, C, P, B=1, residency=-1):
        return model_plan(ext, "H100", dtype, ndir, B, C, P, residency)
    for dtype in (0, 1):  # small and medium: on chip in both precisions
        for C, P in ((1024, 128), (2048, 256)):
            p = plan(dtype, 1, C, P)
            assert p["on_chip"] and p["grid"] == 132 and p["chunks"] <= 132
    p = plan(1, 1, 4096, 512, B=8)  # original bf16: 32 cells per CTA, 128 CTAs, 177 KB at B >= 5
    assert p["on_chip"] and p["cells_per_unit"] == 32 and p["chunks"] == 128 and p["grid"] == 132
    assert p["smem_bytes"] == 5 * 32 * 512 * 2 + 8 * 512 * 4 + 8 * 32 * 4  # weights, h tile, m tile
    assert not plan(0, 1, 4096, 512)["on_chip"]  # fp32 original: global/L2 path
    assert not plan(1, 2, 4096, 512)["on_chip"]  # both directions of the original: too big on chip
    with pytest.raises(RuntimeError, match="do not fit in shared memory"):
        plan(0, 1, 4096, 512, residency=1)
    assert not plan(1, 1, 1024, 128, residency=0)["on_chip"]
    assert plan(1, 1, 4096, 512, B=1000)["workspace_bytes"] == 128 * 1000 * 512 * 4


def test_planner_respects_static_shared_memory(ext):
    """A candidate whose dynamic smem fits the opt-in limit only without the kernel's static smem
    must be skipped (cudaFuncSetAttribute would refuse it), not chosen."""
    need = ext.smem_bytes(True, 1, 8, 32, 512)
    sms, _, _, _ = DEVICES["H100"]
    for static in (0, 16):
        p = ext.plan_model(1, 1, 8, 4096, 512, sms, need, need + 4096, 2, -1, static, 1024)
        assert p["on_chip"] == (static == 0), (static, p)


def test_planner_rejects_bad_problems(ext):
    for args in ((2, 1, 4, 64, 16), (0, 3, 4, 64, 16), (0, 1, 0, 64, 16), (0, 1, 4, 0, 16), (0, 1, 4, 64, 7)):
        with pytest.raises(RuntimeError):
            model_plan(ext, "H100", *args)
    with pytest.raises(RuntimeError, match="residency"):
        model_plan(ext, "H100", 0, 1, 4, 64, 16, residency=5)


def emulate(ext, dirs, reverse, cell_clip, proj_clip, cpb, bt):
    """Runs the host emulation on fp32 CPU tensors; returns per direction (out, h_T, c_T)."""
    B, T, G = dirs[0][0].shape
    C, P = G // 4, dirs[0][1].shape[1]
    keep, ptr, res = [], {k: [] for k in ("x", "whh", "wpT", "len", "out", "h", "c")}, []
    for xproj, w_hh, w_p, lengths, h0, c0 in dirs:
        t = dict(x=xproj.contiguous(), whh=w_hh.contiguous(), wpT=w_p.t().contiguous(),
                 len=lengths.to(torch.int32).contiguous(), out=torch.full((B, T, P), float("nan")),
                 h=h0.clone(), c=c0.clone())
        for k, v in t.items():
            ptr[k].append(v.data_ptr())
        keep.append(t)
        res.append((t["out"], t["h"], t["c"]))
    ext.emulate(len(dirs), B, T, C, P, ptr["x"], ptr["whh"], ptr["wpT"], ptr["len"], ptr["out"], ptr["h"],
                ptr["c"], [int(r) for r in reverse], cell_clip, proj_clip, cpb, bt)
    return res


EMU_SHAPES = [  # B, T, C, P, lengths
    pytest.param(3, 7, 64, 16, [7, 1, 0], id="fixture-B3"),
    pytest.param(11, 6, 40, 6, [6, 1, 0, 3, 6, 2, 5, 4, 0, 6, 1], id="C40-P6-B11-partial-tile"),
    pytest.param(2, 9, 24, 8, [9, 4], id="C24-P8-B2"),
    pytest.param(1, 5, 72, 66, [5], id="P66-not-mult-of-32"),
    pytest.param(5, 4, 130, 20, [0, 0, 0, 0, 0], id="all-empty"),
    pytest.param(4, 3, 8, 2, [3, 3, 3, 3], id="P2-C8-full"),
    pytest.param(9, 5, 100, 34, [5, 2, 0, 5, 1, 3, 7, -2, 4], id="B9-clamped-lengths"),
]


@pytest.mark.parametrize("B,T,C,P,lens", EMU_SHAPES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("cell_clip,proj_clip", [pytest.param(None, None, id="noclip"),
                                                 pytest.param(CELL_CLIP, PROJ_CLIP, id="clip")])
def test_emulated_kernel_matches_reference(ext, B, T, C, P, lens, reverse, cell_clip, proj_clip):
    """The kernel's decomposition (units, last partial unit, batch tiles, lane maps, butterfly,
    reverse positions, masking, fixed-order chunk sums, both clips) at the cells per unit and batch
    tile the planner picks, at the smallest unit, and at one unit for all of C."""
    torch.manual_seed(B * 1000 + C)
    x, w_hh, w_p, L, h0, c0 = make_inputs(B, T, C, P, lens)
    if max(lens) > 0:  # the clips fire (an all-empty batch runs no step at all)
        ref = clipped_reference(x, w_hh, w_p, L, h0, c0, cell_clip, proj_clip, reverse)
    else:
        ref = lstm_layer_ref(x.double(), w_hh.double(), w_p.double(), L, h0.double(), c0.double(),
                             cell_clip, proj_clip, reverse)
    plan = model_plan(ext, "H100", 0, 1, B, C, P)
    for cpb, bt in {(plan["cells_per_unit"], plan["batch_tile"]), (min(8, C), 1), (C, 8), (3, 2)}:
        out, h, c = emulate(ext, [(x, w_hh, w_p, L, h0, c0)], [reverse], cell_clip, proj_clip, cpb, bt)[0]
        for name, g, r in zip(("out", "h_T", "c_T"), (out, h, c), ref):
            assert not torch.isnan(g).any(), f"{name}: a position was never written (cpb={cpb}, bt={bt})"
            assert_close(g, r.float(), torch.float32, msg=f"{name} cpb={cpb} bt={bt}")


@pytest.mark.parametrize("cell_clip,proj_clip", [pytest.param(None, None, id="noclip"),
                                                 pytest.param(CELL_CLIP, PROJ_CLIP, id="clip")])
def test_emulated_two_directions(ext, cell_clip, proj_clip):
    """Both directions in one launch with different lengths per direction (with and without clips
    that fire): each direction gives its own reference result."""
    torch.manual_seed(7)
    B, T, C, P = 6, 8, 48, 10
    f = make_inputs(B, T, C, P, [8, 0, 3, 5, 1, 7])
    b = make_inputs(B, T, C, P, [2, 6, 0, 4, 8, 1])
    (of, hf, cf), (ob, hb, cb) = emulate(ext, [f, b], [False, True], cell_clip, proj_clip, 16, 4)
    rf = clipped_reference(*f, cell_clip, proj_clip, False)
    rb = clipped_reference(*b, cell_clip, proj_clip, True)
    for name, g, r in zip(("out_f", "h_f", "c_f", "out_b", "h_b", "c_b"), (of, hf, cf, ob, hb, cb), rf + rb):
        assert_close(g, r.float(), torch.float32, msg=name)


def test_emulated_stateful_continuation(ext):
    """h_T, c_T of one launch fed back as the next launch's state give the reference's chained
    result, with clips that fire (the CPU counterpart of the GPU test_stateful_continuation)."""
    torch.manual_seed(5)
    B, T, C, P = 5, 6, 40, 6
    xa, w_hh, w_p, la, h0, c0 = make_inputs(B, T, C, P, [6, 1, 0, 3, 5])
    xb, _, _, lb, _, _ = make_inputs(B, T, C, P, [2, 6, 4, 0, 6])
    clips = (CELL_CLIP, PROJ_CLIP)
    o1, h1, c1 = emulate(ext, [(xa, w_hh, w_p, la, h0, c0)], [False], *clips, 8, 4)[0]
    o2, h2, c2 = emulate(ext, [(xb, w_hh, w_p, lb, h1, c1)], [False], *clips, 8, 4)[0]
    r1 = clipped_reference(xa, w_hh, w_p, la, h0, c0, *clips)
    r2 = clipped_reference(xb, w_hh, w_p, lb, r1[1], r1[2], *clips)
    zeros = [torch.zeros(B, n, dtype=torch.float64) for n in (P, C)]
    fresh = lstm_layer_ref(xb.double(), w_hh.double(), w_p.double(), lb, *zeros, *clips)
    assert_differs(fresh[0], r2[0], torch.float64, msg="carried state")
    for name, g, r in zip(("out1", "out2", "h", "c"), (o1, o2, h2, c2), (r1[0], r2[0], r2[1], r2[2])):
        assert_close(g, r.float(), torch.float32, msg=name)


# ---------------------------------------------------------------------------------------------
# On a GPU: kernel vs fp64 reference
# ---------------------------------------------------------------------------------------------
GPU_SHAPES = [
    pytest.param(3, 7, 64, 16, id="fixture-C64-P16-B3-T7"),
    pytest.param(256, 5, 64, 16, id="fixture-C64-P16-B256-T5"),
    pytest.param(1, 50, 1024, 128, id="small-C1024-P128-B1-T50"),
    pytest.param(64, 20, 1024, 128, id="small-C1024-P128-B64-T20"),
    pytest.param(8, 20, 2048, 256, id="medium-C2048-P256-B8-T20"),
    pytest.param(1, 20, 4096, 512, id="original-C4096-P512-B1-T20"),
    pytest.param(5, 20, 4096, 512, id="original-C4096-P512-B5-T20"),
    pytest.param(256, 8, 4096, 512, id="original-C4096-P512-B256-T8"),
    pytest.param(2, 9, 40, 6, id="odd-C40-P6-B2-T9"),
]


def ragged(B, T, device):
    """Lengths with a full row, a length-1 row and an empty row (where B allows), others random."""
    lens = torch.randint(0, T + 1, (B,))
    for i, v in enumerate((T, 1, 0)[:B]):
        lens[i] = v
    return lens.to(device)


def run_both(B, T, C, P, dtype, reverse, residency="auto"):
    """The kernel and the fp64 reference on ragged inputs, with clips that fire."""
    xproj, w_hh, w_p, _, h0, c0 = make_inputs(B, T, C, P, [0] * B, "cuda", dtype)
    lens = ragged(B, T, "cuda")
    low = [t.to(dtype) for t in (xproj, w_hh, w_p)]
    got = lstm_cuda._lstm_layer_cuda_with(*low, lens, h0, c0, CELL_CLIP, PROJ_CLIP, reverse,
                                         residency=residency)
    ref = lstm_layer_ref(xproj.double(), w_hh.double(), w_p.double(), lens, h0.double(), c0.double(),
                         CELL_CLIP, PROJ_CLIP, reverse)
    return got, ref, (low, lens, h0, c0)


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,C,P", GPU_SHAPES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
def test_fp32_matches_reference(B, T, C, P, reverse):
    got, ref, _ = run_both(B, T, C, P, torch.float32, reverse)
    for name, g, r in zip(("out", "h_T", "c_T"), got, ref):
        assert_close(g, r.float(), torch.float32, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,C,P", GPU_SHAPES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
def test_bf16_within_torch_error(B, T, C, P, reverse):
    bf = torch.bfloat16
    got, ref, (low, lens, h0, c0) = run_both(B, T, C, P, bf, reverse)
    base = lstm_layer_ref(*low, lens, h0.to(bf), c0.to(bf), CELL_CLIP, PROJ_CLIP, reverse)
    for name, g, r, b in zip(("out", "h_T", "c_T"), got, ref, base):
        assert_lowp_close(g, r, b, msg=name)
        assert err_ratio(g, r) <= ERR_RATIO[bf], name


@pytest.mark.gpu
@pytest.mark.parametrize("residency", ["global", "shared"])
@pytest.mark.parametrize("B,T,C,P", [GPU_SHAPES[0], GPU_SHAPES[3], GPU_SHAPES[6]])
def test_residency_paths_agree(B, T, C, P, residency):
    """Both weight paths (on chip, and the global/L2 fallback) match the reference."""
    dtype = torch.bfloat16 if C == 4096 else torch.float32
    got, ref, (low, lens, h0, c0) = run_both(B, T, C, P, dtype, True, residency)
    if dtype == torch.float32:
        for name, g, r in zip(("out", "h_T", "c_T"), got, ref):
            assert_close(g, r.float(), torch.float32, msg=name)
    else:
        for name, g, r in zip(("out", "h_T", "c_T"), got, ref):
            assert err_ratio(g, r) <= ERR_RATIO[dtype], name


@pytest.mark.gpu
def test_fp32_original_falls_back_to_global():
    """fp32 weights of the original model do not fit on chip: the plan must say so and still run."""
    ext = lstm_cuda.load_extension()
    assert not ext.plan(0, 1, 4, 4096, 512, torch.cuda.current_device())["on_chip"]
    assert ext.plan(1, 1, 4, 4096, 512, torch.cuda.current_device())["on_chip"]


@pytest.mark.gpu
def test_stateful_continuation():
    B, T, C, P = 5, 6, 1024, 128
    xa, w_hh, w_p, _, h0, c0 = make_inputs(B, T, C, P, [0] * B, "cuda")
    xb = make_inputs(B, T, C, P, [0] * B, "cuda")[0]
    la, lb = ragged(B, T, "cuda"), ragged(B, T, "cuda").flip(0)
    clips = (CELL_CLIP, PROJ_CLIP)
    o1, h1, c1 = lstm_cuda.lstm_layer_cuda(xa, w_hh, w_p, la, h0, c0, *clips)
    o2, h2, c2 = lstm_cuda.lstm_layer_cuda(xb, w_hh, w_p, lb, h1, c1, *clips)
    r1 = clipped_reference(xa, w_hh, w_p, la, h0, c0, *clips)
    r2 = clipped_reference(xb, w_hh, w_p, lb, r1[1], r1[2], *clips)
    for name, g, r in zip(("out1", "out2", "h", "c"), (o1, o2, h2, c2), (r1[0], r2[0], r2[1], r2[2])):
        assert_close(g.cpu(), r.float(), torch.float32, msg=name)


@pytest.mark.gpu
def test_both_directions_in_one_launch():
    B, T, C, P = 4, 9, 1024, 128
    f = make_inputs(B, T, C, P, [0] * B, "cuda")
    b = make_inputs(B, T, C, P, [0] * B, "cuda")
    lens = ragged(B, T, "cuda")
    f[3] = b[3] = lens
    (of, hf, cf), (ob, hb, cb) = lstm_cuda.lstm_bidir_cuda(tuple(f), tuple(b), CELL_CLIP, PROJ_CLIP)
    rf = clipped_reference(*f, CELL_CLIP, PROJ_CLIP, False)
    rb = clipped_reference(*b, CELL_CLIP, PROJ_CLIP, True)
    for name, g, r in zip(("out_f", "h_f", "c_f", "out_b", "h_b", "c_b"), (of, hf, cf, ob, hb, cb), rf + rb):
        assert_close(g.cpu(), r.float(), torch.float32, msg=name)


@pytest.mark.gpu
def test_no_clip_and_non_contiguous_inputs():
    B, T, C, P = 3, 7, 64, 16
    xproj, w_hh, w_p, _, h0, c0 = make_inputs(B, T + 3, C, P, [0] * B, "cuda")
    view = xproj[:, 2:T + 2]
    lens = ragged(B, T, "cuda")
    got = lstm_cuda.lstm_layer_cuda(view, w_hh, w_p, lens, h0, c0, None, None, True)
    ref = lstm_layer_ref(view.double(), w_hh.double(), w_p.double(), lens, h0.double(), c0.double(),
                         None, None, True)
    for name, g, r in zip(("out", "h_T", "c_T"), got, ref):
        assert_close(g, r.float(), torch.float32, msg=name)


@pytest.mark.gpu
def test_deterministic():
    args = make_inputs(8, 10, 1024, 128, [10, 1, 0, 5, 7, 10, 3, 9], "cuda")
    a = lstm_cuda.lstm_layer_cuda(*args, 3.0, 3.0)
    b = lstm_cuda.lstm_layer_cuda(*args, 3.0, 3.0)
    for x, y in zip(a, b):
        assert torch.equal(x, y)



@pytest.mark.gpu
@pytest.mark.parametrize("residency", ["shared", "global"])
def test_kernel_matches_host_emulation(ext, residency):
    """The kernel against its host emulation at the plan's cells per unit and batch tile: the two
    differ only by FMA contraction and libm ulps, so a larger gap is an indexing bug on the GPU."""
    B, T, C, P = 11, 6, 40, 6
    lens = [6, 1, 0, 3, 6, 2, 5, 4, 0, 6, 1]
    args = make_inputs(B, T, C, P, lens, "cuda")
    plan = ext.plan(0, 1, B, C, P, torch.cuda.current_device(), lstm_cuda._RESIDENCY[residency])
    got = lstm_cuda._lstm_layer_cuda_with(*args, CELL_CLIP, PROJ_CLIP, True, residency=residency)
    emu = emulate(ext, [[t.cpu() for t in args]], [True], CELL_CLIP, PROJ_CLIP, plan["cells_per_unit"],
                  plan["batch_tile"])[0]
    for name, g, e in zip(("out", "h_T", "c_T"), got, emu):
        assert_close(g.cpu(), e, torch.float32, msg=name)
