"""elmo_fast.ray on a local 2-CPU Ray cluster started once for this file, with the shared fixture
model: embed_dataset and `embed --ray` equal the single-process stateless (and warm-start) output,
a worker killed mid-job is restarted by Ray and the output is still complete and equal, stateful
mode is refused, bad input stops the job before Ray, and a missing Ray names the extra."""
from __future__ import annotations

import json
import os
import re
import sys

import h5py
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'elmo_fast[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'elmo_fast[ray]')")

from _tiny_model import one_thread  # noqa: E402
from conftest import FIXTURES  # noqa: E402
from elmo_fast import ElmoEmbedder, cli  # noqa: E402
from elmo_fast import ray as elmo_ray  # noqa: E402
from elmo_fast.corpus import open_embeddings  # noqa: E402
from tolerances import assert_close  # noqa: E402

if not (FIXTURES / "options.json").exists():
    pytest.skip(f"ELMo fixture not found at {FIXTURES}", allow_module_level=True)

MODEL = str(FIXTURES)


def _sentences():
    """The fixture's 30 sentences (3 to 53 tokens) plus odd ones: one token, non-ASCII, a repeat."""
    batches = json.loads((FIXTURES / "sentences.json").read_text())
    out = [" ".join(s) for b in batches for s in b]
    return out + ["a", "ünïcödé ẞ 東京 .", out[3]]


SENTENCES = _sentences()


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster for the file: 2 CPUs, no dashboard; a new one (address='local'), never a
    cluster another process on this machine started."""
    with one_thread():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
                 logging_level="WARNING", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def oracles():
    """Single-process stateless embedders (plain and warm start): each sentence alone."""
    return {warm: ElmoEmbedder(model=MODEL, stateful=False, warm_start=warm, progress=False)
            for warm in (False, True)}


def _expected(embedder, sentence, layers, pool):
    emb = embedder.embed_batch([sentence.split()])[0]
    emb = {"all": emb, "top": emb[-1], "average": np.average(emb, axis=0)}[layers]
    return emb.mean(axis=-2) if pool == "mean" else emb


@pytest.mark.parametrize("layers, pool, warm, workers", [
    pytest.param("all", None, False, 2, id="all-2workers"),
    pytest.param("average", "mean", True, 1, id="average-mean-warm-1worker"),
])
def test_embed_dataset_equals_single_process(oracles, layers, pool, warm, workers):
    ds = elmo_ray.sentences_dataset(SENTENCES, rows_per_block=5)
    embedded = elmo_ray.embed_dataset(ds, MODEL, layers=layers, pool=pool, warm_start=warm, workers=workers,
                                      batch_size=3, batches_per_call=2)
    got = list(elmo_ray.ordered_embeddings(embedded, len(SENTENCES)))
    assert len(got) == len(SENTENCES)
    for i, (sentence, emb) in enumerate(zip(SENTENCES, got)):
        ref = _expected(oracles[warm], sentence, layers, pool)
        assert_close(torch.from_numpy(np.array(emb)), torch.from_numpy(ref), msg=f"sentence {i}")


def test_rows_keyed_by_index_with_token_counts():
    ds = elmo_ray.sentences_dataset(SENTENCES[:7], rows_per_block=2)
    rows = elmo_ray.embed_dataset(ds, MODEL, layers="top", pool="mean", batch_size=2).take_all()
    assert sorted(r["index"] for r in rows) == list(range(7))
    for r in rows:
        assert r["tokens"] == len(SENTENCES[r["index"]].split())
        assert np.asarray(r["embedding"]).shape == (32,)


def test_missing_column_is_named():
    ds = ray.data.from_items([{"text": "a b"}, {"text": "c"}])
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        elmo_ray.embed_dataset(ds, MODEL).take_all()
    assert elmo_ray._worker_error(info.value).startswith("KeyError: \"the dataset has no column 'index'")


def _corpus(tmp_path, lines=SENTENCES):
    p = tmp_path / "in.txt"
    p.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    return p


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_same_output(got_path, ref_path, n=None):
    """The same file: root attributes (model identity, mode, layout), keys, index, and every
    sentence's vectors within the fp32 tolerance, read back through open_embeddings."""
    with h5py.File(got_path, "r") as g, h5py.File(ref_path, "r") as r:
        assert dict(g.attrs) == dict(r.attrs)
        assert sorted(g.keys()) == sorted(r.keys())
        if "sentence_to_index" in r:
            assert g["sentence_to_index"][0] == r["sentence_to_index"][0]
    with open_embeddings(str(got_path)) as got, open_embeddings(str(ref_path)) as ref:
        assert len(got) == len(ref) == (len(SENTENCES) if n is None else n)
        for i in range(len(ref)):
            assert_close(torch.from_numpy(np.array(got[i])), torch.from_numpy(np.array(ref[i])),
                         msg=f"sentence {i}")


@pytest.mark.parametrize("fmt, extra, empty", [
    pytest.param("--all", ["--warm-start"], False, id="allennlp-all-warm"),
    pytest.param("--top", ["--layout", "flat", "--pool", "mean", "--empty-lines", "keep"], True,
                 id="flat-top-mean-empty-line-kept"),
    pytest.param("--all", ["--layout", "flat", "--shard", "1/2", "--bucket-window", "8"], False,
                 id="flat-all-shard-1of2"),
])
def test_cli_ray_equals_single_process(capsys, tmp_path, fmt, extra, empty):
    lines = SENTENCES[:5] + [""] + SENTENCES[5:] if empty else SENTENCES
    src = _corpus(tmp_path, lines)
    common = [fmt, "--model", MODEL, "--stateless", "--batch-size", "4", *extra]
    rc, _, err = _run(capsys, "embed", src, tmp_path / "single.hdf5", *common, "--no-progress")
    assert rc == 0, err
    rc, _, err = _run(capsys, "embed", src, tmp_path / "ray.hdf5", *common, "--ray", "--workers", "2")
    assert rc == 0, err
    assert ("embedding on Ray: 2 worker(s)" in err
            and re.search(r"wrote \d+ sentences .*Ray: 2 worker", err)), err
    n = 17 if "--shard" in extra else len(lines)  # shard 1/2 of 5 windows of 8: windows 2-4, sentences 16-32
    _assert_same_output(tmp_path / "ray.hdf5", tmp_path / "single.hdf5", n)


def test_worker_killed_mid_job_is_restarted(capsys, tmp_path, monkeypatch):
    src = _corpus(tmp_path)
    common = ["--top", "--model", MODEL, "--stateless", "--batch-size", "1", "--no-progress"]
    assert _run(capsys, "embed", src, tmp_path / "single.hdf5", *common)[0] == 0
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("ELMO_FAST_RAY_TEST_EXIT", f"2:{marks}")
    rc, _, err = _run(capsys, "embed", src, tmp_path / "ray.hdf5", *common, "--ray", "--workers", "2")
    assert rc == 0, err
    # A worker did die (its pid is recorded), and Ray's restart + task retry still gave everything.
    assert (marks / "ray-worker-exit").read_text().isdigit()
    _assert_same_output(tmp_path / "ray.hdf5", tmp_path / "single.hdf5")


def test_resume_refused(capsys, tmp_path):
    rc, _, err = _run(capsys, "embed", _corpus(tmp_path), tmp_path / "o.hdf5", "--top", "--model", MODEL,
                      "--stateless", "--resume", "--ray")
    assert rc == 2 and "--resume does not work with --ray" in err, err


def test_stateful_refused(capsys, tmp_path):
    with pytest.raises(ValueError, match="stateful mode cannot run on Ray: .*scheduling"):
        elmo_ray.embed_dataset(elmo_ray.sentences_dataset(SENTENCES[:2]), MODEL, stateful=True)
    rc, out, err = _run(capsys, "embed", _corpus(tmp_path), tmp_path / "o.hdf5", "--top", "--model", MODEL,
                        "--ray")
    assert rc == 2 and out == ""
    assert re.fullmatch(r"elmo-fast: error: --ray needs --stateless: stateful mode cannot run on Ray: .*\n",
                        err), err
    assert not (tmp_path / "o.hdf5").exists()


@pytest.mark.parametrize("case, content", [("empty-line", b"a b\n\nc\n"), ("bad-utf8", b"ok\nnot \xff ok\n"),
                                           ("bad-weights", b"a b\n")])
def test_bad_input_same_message_before_ray(capsys, tmp_path, monkeypatch, case, content):
    src = tmp_path / "in.txt"
    src.write_bytes(content)
    model = MODEL
    if case == "bad-weights":
        model = tmp_path / "model"
        model.mkdir()
        (model / "options.json").write_text((FIXTURES / "options.json").read_text())
        (model / "weights.hdf5").write_bytes(b"not an hdf5 file")
    argv = ["embed", src, tmp_path / "o.hdf5", "--top", "--model", model, "--stateless", "--no-progress"]
    rc, _, single = _run(capsys, *argv)
    assert rc == 2 and single.startswith("elmo-fast: error: ")

    def never(*a, **k):
        raise AssertionError("Ray work started before the input was checked")

    monkeypatch.setattr(elmo_ray, "embed_dataset", never)
    monkeypatch.setattr(elmo_ray, "sentences_dataset", never)
    rc, _, err = _run(capsys, *argv, "--ray", "--workers", "2")
    assert rc == 2
    assert err == single
    assert not (tmp_path / "o.hdf5").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith("o.hdf5")]   # no temporary file either


def test_ray_missing_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'elmo_fast[ray]'")):
        elmo_ray.embed_dataset(None, MODEL)
    rc, _, err = _run(capsys, "embed", _corpus(tmp_path), tmp_path / "o.hdf5", "--top", "--model", MODEL,
                      "--stateless", "--ray")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'elmo_fast[ray]'" in lines[0], err


def test_resources_sized_from_the_cluster():
    # 2-CPU machine: never every CPU to the actors (that stalls Ray Data's reads for good).
    assert elmo_ray.worker_cpus(2, 2, workers=2, gpu=False) == 0.66
    assert elmo_ray.worker_cpus(2, 2, workers=1, gpu=False) == 1.0
    assert elmo_ray.worker_cpus(16, 16, workers=2, gpu=False) == 5.33
    assert elmo_ray.worker_cpus(6, 2, workers=1, gpu=False) == 1.0      # three 2-CPU nodes: fits one node
    assert elmo_ray.worker_cpus(64, 32, workers=4, gpu=True) == 1.0     # a GPU worker needs little CPU
    ds = elmo_ray.sentences_dataset(SENTENCES[:2])
    with pytest.raises(ValueError, match="need 2 GPUs but the Ray cluster has 0"):
        elmo_ray.embed_dataset(ds, MODEL, workers=2, gpus_per_worker=1)
    with pytest.raises(ValueError, match="leave none of the cluster's 2 CPUs"):
        elmo_ray.embed_dataset(ds, MODEL, workers=2, cpus_per_worker=1)


def test_ray_options_need_ray(capsys, tmp_path):
    rc, _, err = _run(capsys, "embed", _corpus(tmp_path), tmp_path / "o.hdf5", "--top", "--model", MODEL,
                      "--stateless", "--workers", "2")
    assert rc == 2 and "--workers and --gpus-per-worker need --ray" in err
