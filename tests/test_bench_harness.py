"""The benchmark harness (elmo_fast.bench): where it looks for shared files, how records store paths,
the CPU defaults, the backend switch, TF32 off, and records written after every measurement."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics

import pytest
import torch
from _tiny_model import one_thread, write_tiny_model

from elmo_fast import bench
from elmo_fast.bench import elmo as bench_elmo
from elmo_fast.bench import inputs
from elmo_fast.ops import _dispatch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse(*argv):
    return bench.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


# ------------------------------------------------------------------------------- inputs and paths
def test_shared_folder_from_the_environment(tmp_path, monkeypatch):
    fx = tmp_path / "elsewhere" / "fixtures" / "elmo"
    fx.mkdir(parents=True)
    (fx / "sentences.json").write_text(json.dumps([["a b c", "d e"], ["f"]]))
    monkeypatch.delenv("ELMO_FAST_FIXTURES", raising=False)
    monkeypatch.setenv("ELMO_FAST_SHARED", str(tmp_path / "elsewhere"))
    assert inputs.fixtures_dir() == fx
    lengths, src = inputs.sentence_lengths()
    assert lengths == [3, 2, 1] and src == str(fx / "sentences.json")
    words, _ = inputs.vocabulary()
    assert set(words) == set("abcdef")


def test_missing_fixture_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_FIXTURES", str(tmp_path / "nowhere"))
    monkeypatch.setattr(inputs, "shared_candidates", lambda: [tmp_path / "shared"])
    lengths, src = inputs.sentence_lengths()
    assert lengths == inputs.FIXTURE_LENGTHS
    assert str(tmp_path / "nowhere") in src and str(tmp_path / "shared") in src
    with pytest.raises(FileNotFoundError, match="looked in"):
        monkeypatch.setenv("ELMO_ALLENNLP_TOOL", str(tmp_path / "no_tool.py"))
        monkeypatch.setattr(bench.allennlp, "_carried_dirs", lambda: [])
        monkeypatch.setattr(bench.allennlp, "shared_candidates", lambda: [tmp_path / "shared"])
        bench.load_allennlp()


def test_records_store_no_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BENCH_CACHE", str(tmp_path / "cache"))
    assert bench.display_path(ROOT / "bench" / "README.md") == "bench/README.md"
    assert bench.display_path(ROOT.parent / "shared" / "fixtures") == "../shared/fixtures"
    assert bench.display_path(tmp_path / "cache" / "small-seed0" / "options.json") == \
        "<bench cache>/small-seed0/options.json"
    assert bench.display_path(tmp_path / "other" / "weights.hdf5") == "weights.hdf5"


def test_committed_records_hold_no_machine_paths():
    for path in sorted((ROOT / "bench" / "results").rglob("*.json")):
        text = path.read_text()
        for marker in ('"/work', '"/home', '"/root', '"/tmp'):
            assert marker not in text, f"{path.name} stores an absolute path ({marker}...)"


# ------------------------------------------------------------------------------------ CPU defaults
def test_cpu_defaults_leave_out_bf16_and_the_duplicate_fast_path():
    cfg = bench_elmo._resolve(parse("--device", "cpu"))
    assert cfg["variants"] == ["reference", "allennlp"] and cfg["sizes"] == [1, 32]
    assert cfg["arch"] == "original" and cfg["budget"] <= 1.0
    assert "fast-bf16" not in bench_elmo._resolve(parse("--device", "cpu", "--quick"))["variants"]
    opted = bench_elmo._resolve(parse("--device", "cpu", "--variants", "reference,fast-bf16"))
    assert opted["variants"] == ["reference", "fast-bf16"]


@pytest.mark.parametrize("bad", ["1,x", "0", ","])
def test_bad_batch_sizes_are_one_line(bad):
    with pytest.raises(SystemExit, match="--batch-sizes"):
        bench_elmo._resolve(parse("--device", "cpu", "--batch-sizes", bad))


# ----------------------------------------------------------------------------- backend and TF32
def test_force_backend_steers_records_and_restores(monkeypatch):
    from elmo_fast import ops

    monkeypatch.setenv("ELMO_FAST_BACKEND", "auto")
    seen = {}
    x = torch.randn(3, 5)
    args = dict(x=x, layers=[], w_proj=torch.randn(5, 2), b_proj=torch.randn(2))
    with bench._force_backend("torch", seen):
        assert ops.current_backend()[0] == "torch"
        _dispatch.OPS["highway"](**args)
    assert seen == {"highway": "torch"}
    assert ops.current_backend()[0] == "auto" and os.environ["ELMO_FAST_BACKEND"] == "auto"
    with pytest.raises(ZeroDivisionError), bench._force_backend("triton"):
        assert ops.current_backend()[0] == "triton"
        1 / 0
    assert ops.current_backend()[0] == "auto"


def test_fp32_exact_turns_tf32_off_and_back():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with bench.fp32_exact():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ------------------------------------------------------------------------- the run and its record
@pytest.fixture
def tiny_files(tmp_path, monkeypatch):
    files = write_tiny_model(tmp_path / "model", seed=3)
    monkeypatch.setattr(bench_elmo, "model_files", lambda arch, seed=0: files)
    monkeypatch.setattr(bench_elmo, "matmul_ceiling",
                        lambda device, dtype, quick: {"dtype": str(dtype), "n": 1, "flops_per_s": 1e9,
                                                      "timer": "test"})
    return files


def test_run_writes_a_whole_record(tiny_files, tmp_path):
    js, md = tmp_path / "out" / "r.json", tmp_path / "out" / "r.md"
    with one_thread():
        rc = bench.run(parse("--device", "cpu", "--quick", "--variants", "reference,fast",
                             "--batch-sizes", "3,1", "--budget", "0.01", "--latency-reps", "2",
                             "--json", str(js), "--md", str(md)))
    assert rc == 0
    rec = json.loads(js.read_text())
    assert rec["complete"] and [r["batch_size"] for r in rec["throughput"]] == [3, 3, 1, 1]
    assert set(rec["latency"]) == {"reference", "fast"}
    assert rec["backends"]["reference"]["lstm_layer"] == "torch"
    assert all(e["max_abs"] == 0.0 for e in rec["errors"])  # on the CPU, fast is the reference
    assert not any(str(tmp_path) in str(v) for v in (rec["model_files"], rec["sentence_lengths_from"]))
    assert "INCOMPLETE" not in md.read_text() and "| 3 | reference (float32)" in md.read_text()


def test_a_run_cut_short_keeps_what_it_measured(tiny_files, tmp_path, monkeypatch):
    js = tmp_path / "r.json"
    real = bench_elmo.time_calls
    calls = []

    def time_calls(fn, device, budget):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the stage's time limit, as far as the record is concerned
        return real(fn, device, budget)

    monkeypatch.setattr(bench_elmo, "time_calls", time_calls)
    with one_thread(), pytest.raises(KeyboardInterrupt):
        bench.run(parse("--device", "cpu", "--variants", "reference,fast", "--batch-sizes", "2",
                        "--budget", "0.01", "--json", str(js)))
    rec = json.loads(js.read_text())
    assert not rec["complete"] and [r["variant"] for r in rec["throughput"]] == ["reference"]


def test_fp32_variants_run_without_tf32(tiny_files, monkeypatch):
    from elmo_fast import batch_to_ids, modules

    tf32_during_call = []
    real = modules.Elmo.forward

    def forward(self, *args, **kwargs):
        tf32_during_call.append(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(modules.Elmo, "forward", forward)
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        ids = batch_to_ids([["a", "bc"], ["d"]])
        for variant in ("reference", "fast"):
            _, call = bench.build_variant(variant, *tiny_files, torch.device("cpu"))
            call(ids)
        assert torch.backends.cudnn.allow_tf32  # back on afterwards
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    assert tf32_during_call == [False, False]


# ------------------------------------------------------------------------- bench_cpu.py (issue 12)
def test_batch_flops_counts_each_family_by_hand():
    """Tiny model, sentences of 3 and 5 positions (with <S>, </S>), 4 distinct token rows."""
    from elmo_fast import synthetic
    o = synthetic.make_options(**inputs.TINY_OPTIONS)
    E, P, C, F = 4, 8, 16, 12
    cnn = sum(2 * (50 - w + 1) * w * E * n for w, n in [[1, 4], [2, 8]])
    enc = cnn + 2 * 2 * F * F + 2 * F * P                      # one highway layer, projection
    per_pos = {"lstm_input": 4 * 2 * P * 4 * C, "lstm_recurrent": 4 * 2 * P * 4 * C,
               "lstm_cell_projection": 4 * 2 * C * P}         # 2 layers x 2 directions
    f = bench.batch_flops(o, [3, 5], distinct=4)
    assert (f["positions"], f["padded_positions"], f["distinct_tokens"]) == (8, 10, 4)
    for name, rows in (("model", (8, 8)), ("executed", (4, 8)), ("padded", (10, 10))):
        got = f[name]
        assert got["char_cnn"] + got["highway"] + got["projection"] == pytest.approx(enc * rows[0]), name
        for k, v in per_pos.items():
            assert got[k] == pytest.approx(v * rows[1]), (name, k)
        assert got["total"] == pytest.approx(enc * rows[0] + sum(per_pos.values()) * rows[1]), name
    assert f["model"]["total"] == pytest.approx(8 * inputs.flops_per_token(o)["total"])


def test_profile_families_of_ops():
    from elmo_fast.bench.cpu_profile import family
    P, C = 8, 16
    assert family("lstm_layer", "mkldnn::_linear_pointwise", [[5, P], [4 * C, P]], P, C) == "recurrent GEMMs"
    assert family("lstm_layer", "aten::mm", [[5, C], [C, P]], P, C) == "cell projections"
    assert family("lstm_layer", "aten::sigmoid_", [[5, C]], P, C) == "cell updates"
    assert family("lstm_layer", "aten::index_select", [[5, C]], P, C) == "copies and bookkeeping"
    assert family("input_projection", "mkldnn::_linear_pointwise", [[50, P]], P, C) == "input projections"
    assert family("bilstm_layer", "aten::addmm", [[50, P]], P, C) == "input projections"
    assert family("bilstm_layer", "aten::index_copy_", [[50, P]], P, C) == "copies and bookkeeping"
    assert family("char_cnn", "aten::conv1d", [], P, C) == "char CNN"
    assert family("highway", "aten::addmm", [], P, C) == "highway + projection"
    assert family("", "aten::cat", [], P, C) == "outside the ops"


def _bench_cpu():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_cpu", ROOT / "bench" / "bench_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_cpu_quick_records_fractions_and_agreement(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    assert _bench_cpu().main(["--quick", "--batches", "2", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["arch"] == "tiny" and rec["environment"]["torch"] == torch.__version__
    assert {"date", "commit", "cpu", "torch_threads", "cpu_kernels"} <= set(rec["environment"])
    assert [(r["mode"], r["batch"]) for r in rec["rows"]] == [("stateless", 2), ("stateful", 2)]
    assert rec["ceiling"]["flops_per_s"] > 0
    for r in rec["rows"]:
        # each row against the ceiling sampled while it ran: 2 calls before each round and after the last
        samples = r["ceiling"]["samples_flops_per_s"]
        assert len(samples) == 2 * (rec["reps"] + 1) and min(samples) > 0
        ceil = r["ceiling"]["flops_per_s"]
        assert ceil == pytest.approx(statistics.median(samples))
        med = sorted(r["times_s"]["elmo_fast"])[len(r["times_s"]["elmo_fast"]) // 2]
        want = r["flops"]["model"]["total"] / med / ceil
        assert r["fraction_of_ceiling"]["elmo_fast"] == pytest.approx(want)
        assert r["last_call_error"]["max_abs"] < 1e-4 and r["masks_equal"]
        assert r["ratio"] > 0 and r["positions"] == r["tokens"] + 4


def test_bench_cpu_profile_and_busy_core_modes(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BENCH_CACHE", str(tmp_path / "cache"))
    mod = _bench_cpu()
    out = tmp_path / "p.json"
    assert mod.main(["--quick", "--profile", "--batches", "2", "--json", str(out)]) == 0
    prof = json.loads(out.read_text())["profile"]
    assert [p["threads"] for p in prof] == [1, 2]
    for p in prof:
        assert p["seconds"]["recurrent GEMMs"] > 0 and p["seconds"]["char CNN"] > 0
        assert p["seconds"]["input projections"] > 0 and p["seconds"]["cell projections"] > 0
        assert sum(p["seconds"].values()) == pytest.approx(p["profiled_wall_s"], rel=0.05)
    out = tmp_path / "b.json"
    assert mod.main(["--quick", "--busy-core", "--batches", "2", "--json", str(out)]) == 0
    busy = json.loads(out.read_text())["busy_core"]
    assert len(busy) == 1 and set(busy[0]["tokens_per_s"]) == {"1 threads", "2 threads"}
