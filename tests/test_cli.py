"""`elmo-fast embed | info | bench`, mostly in-process through cli.main; one run of the installed
script proves the entry point."""
from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from _tiny_model import read_h5, write_tiny_model, one_thread_per_module  # noqa: F401 (an autouse fixture)
from elmo_fast import ElmoEmbedder, cli
from elmo_fast.corpus import EmbedderModel
from elmo_fast.ops import OPS

SENTENCES = [
    "The quick brown fox jumps over the lazy dog .",
    "Hello world",
    "a",
    "ELMo embeds every token in context , even ünïcödé ones",
    "one two three",
    "x y",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_elmo"), seed=2)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return p


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def model_args(model):
    return ["--model", os.path.dirname(model[0])]


# ------------------------------------------------------------------------------------------ embed
@pytest.mark.parametrize("flag, shape", [("--all", (3, None, 16)), ("--top", (None, 16)),
                                         ("--average", (None, 16))])
def test_embed_formats(capsys, tiny_model, corpus, tmp_path, flag, shape):
    out = tmp_path / "out.hdf5"
    rc, _, err = run(capsys, "embed", corpus, out, flag, *model_args(tiny_model), "--batch-size", 4)
    assert rc == 0, err
    assert "wrote 6 sentences" in err
    data, index = read_h5(out)
    assert set(data) == {str(i) for i in range(len(SENTENCES))}
    assert index == {s: str(i) for i, s in enumerate(SENTENCES)}
    for i, s in enumerate(SENTENCES):
        assert data[str(i)].shape == tuple(len(s.split()) if d is None else d for d in shape)
        assert data[str(i)].dtype == np.float32


def test_embed_stateful_matches_embed_sentences(capsys, tiny_model, corpus, tmp_path):
    out = tmp_path / "out.hdf5"
    rc, _, err = run(capsys, "embed", corpus, out, "--all", "--options-file", tiny_model[0],
                     "--weight-file", tiny_model[1], "--batch-size", 4, "--cuda-device", -1, "--no-progress")
    assert rc == 0 and err == ""
    data, _ = read_h5(out)
    ref = list(ElmoEmbedder(*tiny_model, stateful=True, progress=False)
               .embed_sentences([s.split() for s in SENTENCES], batch_size=4))
    for i in range(len(SENTENCES)):
        np.testing.assert_array_equal(data[str(i)], ref[i])


def test_embed_stateless_equals_each_sentence_alone(capsys, tiny_model, corpus, tmp_path):
    outs = []
    for bs in (1, 4):
        out = tmp_path / f"out{bs}.hdf5"
        rc, _, err = run(capsys, "embed", corpus, out, "--top", "--options", tiny_model[0], "--weights",
                         tiny_model[1], "--stateless", "--batch-size", bs, "--device", "cpu", "--no-progress")
        assert rc == 0, err
        outs.append(read_h5(out)[0])
    emb = ElmoEmbedder(*tiny_model, stateful=False, progress=False)
    for i, s in enumerate(SENTENCES):
        alone = emb.embed_sentence(s.split())[-1]
        for data in outs:
            np.testing.assert_allclose(data[str(i)], alone, rtol=0, atol=2e-6)


def test_embed_stateless_warm_start(capsys, tiny_model, corpus, tmp_path):
    out = tmp_path / "warm.hdf5"
    rc, _, err = run(capsys, "embed", corpus, out, "--top", "--options", tiny_model[0], "--weights",
                     tiny_model[1], "--stateless", "--warm-start", "--batch-size", 3, "--no-progress")
    assert rc == 0, err
    data = read_h5(out)[0]
    warm = ElmoEmbedder(*tiny_model, stateful=False, warm_start=True, progress=False)
    cold = ElmoEmbedder(*tiny_model, stateful=False, progress=False)
    for i, s in enumerate(SENTENCES):
        alone = warm.embed_sentence(s.split())[-1]
        np.testing.assert_allclose(data[str(i)], alone, rtol=0, atol=2e-6)
        assert np.abs(cold.embed_sentence(s.split())[-1] - alone).max() > 1e-4


def test_embed_flags_and_stdin(capsys, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(b"a b\nc/d e\n")})())
    out = tmp_path / "out.hdf5"
    rc, _, err = run(capsys, "embed", "-", out, "--average", "--model", tiny_model[1], "--use-sentence-keys",
                     "--no-progress", "--dtype", "fp32")
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        assert "sentence_to_index" not in f
        assert f["a b"].shape == (2, 16) and f["c/d e"].shape == (2, 16)


def test_forget_sentences(capsys, tiny_model, corpus, tmp_path):
    out = tmp_path / "out.hdf5"
    assert run(capsys, "embed", corpus, out, "--top", *model_args(tiny_model), "--forget-sentences",
               "--no-progress")[0] == 0
    data, index = read_h5(out)
    assert index is None and len(data) == len(SENTENCES)


@pytest.mark.fixtures
def test_embed_reproduces_allennlp_fixture(capsys, fixtures_dir, tmp_path):
    """The fixture's outputs were made statefully, batch size 3, batch i = sentences[0..2][i]:
    `embed --top --batch-size 3` on the interleaved corpus reproduces them."""
    sentences = json.loads((fixtures_dir / "sentences.json").read_text())
    lines = [sentences[k][i] for i in range(len(sentences[0])) for k in range(3)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.hdf5"
    rc, _, err = run(capsys, "embed", src, out, "--top", "--model", fixtures_dir, "--batch-size", 3,
                     "--no-progress")
    assert rc == 0, err
    data, index = read_h5(out)
    assert index == {s: str(j) for j, s in enumerate(lines)}
    expected = [h5py.File(fixtures_dir / f"lm_embeddings_{k}.hdf5", "r") for k in range(3)]
    try:
        for i in range(len(sentences[0])):
            for k in range(3):
                exp = np.concatenate([expected[k][str(i)][0], expected[k][str(i)][1]], axis=-1)
                np.testing.assert_allclose(data[str(3 * i + k)], exp, rtol=0, atol=1e-5)
    finally:
        for f in expected:
            f.close()


# ----------------------------------------------------------------------------------------- errors
def _bad_weights(tmp_path, tiny_model):
    d = tmp_path / "broken_model"
    d.mkdir()
    shutil.copy(tiny_model[0], d / "options.json")
    (d / "weights.hdf5").write_bytes(b"not hdf5 at all")
    return d


@pytest.mark.parametrize("case, message", [
    ("empty-line", r"contains empty lines at indexes \[1\] \(line numbers \[2\]\)"),
    ("empty-file", r"no sentences"),
    ("bad-utf8", r"line 2 \(index 1\) is not valid UTF-8.*must be UTF-8"),
    ("missing-input", r"input file not found"),
    ("missing-model", r"no such file or directory"),
    ("unknown-model", r"unknown ELMo model 'no-such-model'"),
    ("bad-weights", r"weights\.hdf5"),
    ("duplicate-keys", r"duplicate sentence at indexes 0 and 2"),
    ("missing-gpu", r"no CUDA device"),
    ("batch-size", r"--batch-size must be at least 1"),
    ("missing-out-dir", r"output directory does not exist"),
])
@pytest.mark.parametrize("existing", [False, True], ids=["no-output", "old-output"])
def test_embed_errors_exit_2_cleanly(capsys, tiny_model, tmp_path, case, message, existing):
    if case == "missing-gpu" and torch.cuda.device_count() > 0:
        pytest.skip("this machine has a GPU")
    src = tmp_path / "in.txt"
    src.write_bytes({"empty-line": b"a b\n\nc\n", "empty-file": b"", "bad-utf8": b"ok\nnot \xff ok\n",
                     "duplicate-keys": b"a b\nc\na b\n"}.get(case, b"a b\nc d e\n"))
    out = tmp_path / ("nowhere/out.hdf5" if case == "missing-out-dir" else "out.hdf5")
    if existing and case != "missing-out-dir":
        out.write_bytes(b"old")
    argv = ["embed", tmp_path / "nope.txt" if case == "missing-input" else src, out, "--all",
            *model_args(tiny_model), "--no-progress"]
    if case == "bad-weights":
        argv += ["--model", _bad_weights(tmp_path, tiny_model)]
    argv += {"missing-model": ["--model", tmp_path / "nomodel"],
             "unknown-model": ["--model", "no-such-model"],
             "duplicate-keys": ["--use-sentence-keys"], "missing-gpu": ["--device", "cuda:0"],
             "batch-size": ["--batch-size", "0"]}.get(case, [])
    before = sorted(os.listdir(tmp_path))
    rc, stdout, err = run(capsys, *argv)
    assert rc == 2
    assert stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elmo-fast: error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(os.listdir(tmp_path)) == before          # nothing written, no temporary file
    if existing and case != "missing-out-dir":
        assert out.read_bytes() == b"old"


def test_usage_errors(capsys, corpus, tmp_path):
    rc, _, err = run(capsys, "embed", corpus, tmp_path / "o.hdf5")        # no --all/--top/--average
    assert rc == 2 and "one of the arguments --all --top --average is required" in err
    rc, _, err = run(capsys, "embed", corpus, tmp_path / "o.hdf5", "--all", "--top")
    assert rc == 2 and "not allowed with" in err
    rc, _, err = run(capsys, "embed", corpus, tmp_path / "o.hdf5", "--all", "--device", "cpu",
                     "--cuda-device", "0")
    assert rc == 2 and "not allowed with" in err
    assert run(capsys, "--help")[0] == 0
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("elmo-fast ")
    assert not (tmp_path / "o.hdf5").exists()


def test_interrupt_leaves_old_output(capsys, tiny_model, corpus, tmp_path, monkeypatch):
    out = tmp_path / "out.hdf5"
    out.write_bytes(b"old")
    calls = []
    real = EmbedderModel.__call__

    def interrupted(self, ids):     # the model stage
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, ids)

    monkeypatch.setattr(EmbedderModel, "__call__", interrupted)
    rc, _, err = run(capsys, "embed", corpus, out, "--all", *model_args(tiny_model), "--batch-size", 2,
                     "--no-progress")
    assert rc == 130 and "interrupted" in err
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.hdf5"]


# ------------------------------------------------------------------------------------ info, bench
def test_info_text_and_json(capsys):
    rc, out, err = run(capsys, "info", "--arch", "small")
    assert rc == 0, err
    for name in ("char_cnn", "highway", "lstm_layer", "scalar_mix"):
        assert name in OPS and name in out
    assert "torch " in out and "ELMO_FAST_BACKEND" in out and "TRITON_INTERPRET" in out
    assert "CUDA LSTM extension" in out

    rc, out, err = run(capsys, "info", "--json", "--arch", "small")
    assert rc == 0, err
    info = json.loads(out)
    assert set(info["ops"]) == set(OPS)
    for name, entry in info["ops"].items():
        assert entry["selected"] in [b["name"] for b in entry["backends"] if b["available"]], (name, entry)
        assert entry["backends"][-1]["name"] == "torch"
        for b in entry["backends"]:
            assert b["available"] or b["reasons"], (name, b)   # every skipped backend says why
    assert info["torch"] == torch.__version__ and info["cuda"]["available"] == torch.cuda.is_available()
    assert "ELMO_FAST_BACKEND" in info["env"] and "TRITON_INTERPRET" in info["env"]
    assert isinstance(info["cuda_extension"], dict) and info["cuda_extension"]
    from elmo_fast.reference._cpu_gemm import cpu_kernels_status
    assert info["cpu_kernels"] == cpu_kernels_status() and info["cpu_kernels"]


def test_info_reports_a_bad_backend_setting(capsys, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "bogus")
    rc, out, _ = run(capsys, "info", "--json", "--arch", "small")
    assert rc == 0
    info = json.loads(out)
    assert info["backend_override"] is None and "bogus" in info["backend_override_error"]


def test_bench_missing_is_a_clear_error(capsys, monkeypatch, tiny_model, corpus, tmp_path):
    monkeypatch.setitem(sys.modules, "elmo_fast.bench", None)      # import now fails
    rc, _, err = run(capsys, "bench")
    assert rc == 2 and err.startswith("elmo-fast: error: ") and "elmo_fast.bench" in err
    assert run(capsys, "info", "--arch", "small")[0] == 0            # the rest still works
    assert run(capsys, "embed", corpus, tmp_path / "o.hdf5", "--top", *model_args(tiny_model),
               "--no-progress")[0] == 0


# ---------------------------------------------------------------------------------------- script
def test_installed_entry_point(tiny_model, corpus, tmp_path):
    exe = (shutil.which("elmo-fast", path=str(pathlib.Path(sys.executable).parent))
           or shutil.which("elmo-fast"))
    if exe is None:
        pytest.skip("the elmo-fast script is not installed (pip install -e .)")
    out = tmp_path / "out.hdf5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([exe, "embed", str(corpus), str(out), "--average", *model_args(tiny_model),
                           "--stateless"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 6 sentences" in proc.stderr
    assert read_h5(out)[0]["0"].shape == (len(SENTENCES[0].split()), 16)
    proc = subprocess.run([exe, "embed", str(tmp_path / "missing.txt"), str(out), "--top"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("elmo-fast: error: input file not found")
    assert "Traceback" not in proc.stderr
