"""The benchmark harness (elmo_fast.bench): where it looks for shared files, how records store paths,
the CPU defaults, the backend switch, TF32 off, and records written after every measurement."""
from __future__ import annotations

import argparse
import json
import os
import pathlib

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
