"""Model sources: the packaged `tiny` model, NLPL folders (options.json + model.hdf5), zips of them,
model URLs (against a local HTTP server), and `elmo-fast models`. Every file is built here from the
packaged fixture model; nothing is downloaded from outside 127.0.0.1."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from elmo_fast import ElmoEmbedder, Elmo, batch_to_ids
from elmo_fast import download as dl
from elmo_fast.cli import main
from elmo_fast.download import DownloadError, list_models, resolve_model, unzip_model

from test_download import server  # noqa: F401  (the 127.0.0.1 HTTP server fixture)

TINY = dl.packaged_dir("tiny")
TINY_OPTIONS = os.path.join(TINY, "options.json")
TINY_WEIGHTS = os.path.join(TINY, "weights.hdf5")
SENTENCES = [["The", "cat", "sat", "."], ["Hello", "world"]]


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _nlpl_dir(root):
    """An NLPL-style model folder: options.json + model.hdf5 (+ the metadata NLPL ships)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_OPTIONS, root / "options.json")
    shutil.copy(TINY_WEIGHTS, root / "model.hdf5")
    (root / "meta.json").write_text('{"id": 0, "corpus": []}')  # not an options file: ignored
    (root / "README").write_text("test model")
    return root


def _zip(folder, dest, prefix=""):
    with zipfile.ZipFile(dest, "w") as zf:
        for name in sorted(os.listdir(folder)):
            zf.write(folder / name, prefix + name)
    return dest


def _embed(model):
    emb = ElmoEmbedder(model=model, stateful=False, progress=False)
    return emb.embed_batch(SENTENCES)


@pytest.fixture(scope="module")
def reference():
    return ElmoEmbedder(TINY_OPTIONS, TINY_WEIGHTS, stateful=False, progress=False).embed_batch(SENTENCES)


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------- the tiny model
def test_tiny_is_packaged_and_equals_the_fixture(fixtures_dir):
    opts, wts = resolve_model("tiny")
    assert (opts, wts) == (TINY_OPTIONS, TINY_WEIGHTS)
    assert _bytes(opts) == _bytes(fixtures_dir / "options.json")
    assert _bytes(wts) == _bytes(fixtures_dir / "lm_weights.hdf5")
    notice = open(os.path.join(TINY, "NOTICE.md")).read()
    assert "Apache License" in notice and "bilm-tf" in notice and "not for" in notice


def test_tiny_needs_no_cache_or_network(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dl, "download_file", None)  # any download attempt fails loudly
    assert resolve_model("TINY") == (TINY_OPTIONS, TINY_WEIGHTS)
    assert not (tmp_path / "cache").exists()


def test_tiny_missing_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "packaged_dir", lambda name: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="packaged model 'tiny'.*reinstall"):
        resolve_model("tiny")


@pytest.mark.slow
def test_wheel_ships_the_tiny_model(tmp_path):
    """`pip install .` (a wheel) carries the model: the package data is declared, not just present."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ELMO_FAST_BUILD_CUDA="0", PIP_NO_INDEX="1")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), root], env=env, capture_output=True, text=True)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available in this environment")
    assert r.returncode == 0, r.stderr
    wheel = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    assert len(wheel) == 1
    names = zipfile.ZipFile(tmp_path / wheel[0]).namelist()
    for f in ("options.json", "weights.hdf5", "NOTICE.md"):
        assert f"elmo_fast/data/tiny/{f}" in names


# ------------------------------------------------------------------------------- NLPL folders and zips
def test_nlpl_directory(tmp_path, reference):
    folder = _nlpl_dir(tmp_path / "nlpl")
    assert resolve_model(str(folder)) == (str(folder / "options.json"), str(folder / "model.hdf5"))
    _same(_embed(str(folder)), reference)


@pytest.mark.parametrize("prefix", ["", "182/"], ids=["flat", "in-a-folder"])
def test_zip_of_nlpl_directory(tmp_path, reference, prefix):
    archive = _zip(_nlpl_dir(tmp_path / "src"), tmp_path / "182.zip", prefix)
    cache = tmp_path / "cache"
    opts, wts = resolve_model(str(archive), cache_dir=str(cache))
    assert os.path.basename(opts) == "options.json" and os.path.basename(wts) == "model.hdf5"
    assert opts.startswith(str(cache / "unzipped")) and _bytes(wts) == _bytes(TINY_WEIGHTS)
    # only the model files are unpacked, and only once
    assert sorted(os.listdir(os.path.dirname(opts))) == ["meta.json", "model.hdf5", "options.json"]
    assert resolve_model(str(archive), cache_dir=str(cache)) == (opts, wts)
    assert len(os.listdir(cache / "unzipped")) == 1
    _same(_embed(str(archive)), reference)


def test_zip_is_accepted_by_elmo_and_the_cli(tmp_path, monkeypatch, reference):
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    archive = _zip(_nlpl_dir(tmp_path / "src"), tmp_path / "model.zip")
    # allennlp-style Elmo(options_file, weight_file) with a whole model in the first argument
    for model in (str(archive), str(tmp_path / "src"), "tiny"):
        elmo = Elmo(model, None, 1, dropout=0.0, stateful=False)
        assert elmo(batch_to_ids(SENTENCES))["elmo_representations"][0].shape == (2, 4, 32)
    corpus = tmp_path / "in.txt"
    corpus.write_text("The cat sat .\nHello world\n")
    assert main(["embed", str(corpus), str(tmp_path / "out.hdf5"), "--all", "--model", str(archive),
                 "--stateless", "--device", "cpu", "--no-progress"]) == 0
    import h5py
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        np.testing.assert_array_equal(f["0"][()], reference[0])


def test_zip_edge_cases(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        resolve_model(str(bad), cache_dir=str(tmp_path / "c"))
    empty = tmp_path / "nomodel.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("notes.txt", "nothing here")
    with pytest.raises(FileNotFoundError, match="no options.json"):
        resolve_model(str(empty), cache_dir=str(tmp_path / "c"))
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.write(TINY_OPTIONS, "a/options.json")
        zf.write(TINY_OPTIONS, "b/options.json")
    with pytest.raises(ValueError, match="several models"):
        resolve_model(str(two), cache_dir=str(tmp_path / "c"))
    no_weights = tmp_path / "noweights.zip"
    with zipfile.ZipFile(no_weights, "w") as zf:
        zf.write(TINY_OPTIONS, "options.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        resolve_model(str(no_weights), cache_dir=str(tmp_path / "c"))
    # nothing stays behind after the failures
    assert not (tmp_path / "c" / "unzipped").exists() or os.listdir(tmp_path / "c" / "unzipped") == []


def test_interrupted_unpack_leaves_nothing(tmp_path, monkeypatch):
    archive = _zip(_nlpl_dir(tmp_path / "src"), tmp_path / "m.zip")
    real = shutil.copyfileobj
    calls = []

    def interrupted(src, dst, length=0):
        calls.append(1)
        if len(calls) == 2:  # the first file is written, the second is cut short
            raise KeyboardInterrupt
        return real(src, dst, length)

    monkeypatch.setattr(dl.shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        unzip_model(str(archive), str(tmp_path / "c"))
    assert os.listdir(tmp_path / "c" / "unzipped") == []
    monkeypatch.setattr(dl.shutil, "copyfileobj", real)
    assert resolve_model(str(archive), cache_dir=str(tmp_path / "c"))[1].endswith("model.hdf5")


def test_zip_paths_never_leave_the_cache(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.write(TINY_OPTIONS, "../../options.json")
        zf.write(TINY_WEIGHTS, "../../model.hdf5")
    opts, wts = resolve_model(str(evil), cache_dir=str(tmp_path / "c"))
    assert opts.startswith(str(tmp_path / "c" / "unzipped"))
    assert not (tmp_path / "options.json").exists()


def test_changed_zip_is_unpacked_again(tmp_path):
    folder = _nlpl_dir(tmp_path / "src")
    archive = _zip(folder, tmp_path / "m.zip")
    first = unzip_model(str(archive), str(tmp_path / "c"))
    (folder / "meta.json").write_text('{"id": 1, "more": "bytes than before"}')
    _zip(folder, archive)
    os.utime(archive, ns=(os.stat(archive).st_atime_ns, os.stat(archive).st_mtime_ns + 10**9))
    assert unzip_model(str(archive), str(tmp_path / "c")) != first


# ------------------------------------------------------------------------------- model URLs
@pytest.fixture
def served(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    folder = _nlpl_dir(tmp_path / "src")
    server.files["/nlpl/182.zip"] = _bytes(_zip(folder, tmp_path / "182.zip"))
    server.files["/pt/options.json"] = _bytes(TINY_OPTIONS)          # Portuguese layout: options.json
    server.files["/pt/elmo_pt_weights.hdf5"] = _bytes(TINY_WEIGHTS)  # beside elmo_pt_weights.hdf5
    server.files["/std/elmo_x_options.json"] = _bytes(TINY_OPTIONS)
    server.files["/std/elmo_x_weights.hdf5"] = _bytes(TINY_WEIGHTS)
    return server


@pytest.mark.parametrize("path", ["/nlpl/182.zip", "/pt/elmo_pt_weights.hdf5", "/std/elmo_x_weights.hdf5",
                                  "/std/elmo_x_options.json"])
def test_model_url(served, reference, path):
    opts, wts = resolve_model(served.url + path, progress=False)
    assert _bytes(opts) == _bytes(TINY_OPTIONS) and _bytes(wts) == _bytes(TINY_WEIGHTS)
    hits = sum(served.hits.values())
    assert resolve_model(served.url + path, progress=False) == (opts, wts)  # cached: no new request
    assert sum(served.hits.values()) == hits
    _same(_embed(served.url + path), reference)


def test_model_url_in_the_cli(served, tmp_path, reference):
    corpus = tmp_path / "in.txt"
    corpus.write_text("The cat sat .\nHello world\n")
    assert main(["embed", str(corpus), str(tmp_path / "out.hdf5"), "--all", "--stateless", "--device", "cpu",
                 "--no-progress", "--model", served.url + "/nlpl/182.zip"]) == 0


def test_model_url_errors(served, tmp_path, capsys):
    served.files["/lonely/w.hdf5"] = _bytes(TINY_WEIGHTS)
    with pytest.raises(DownloadError, match=r"no options file found beside .*lonely/w\.hdf5.*--options URL"):
        resolve_model(served.url + "/lonely/w.hdf5", progress=False)
    # a bare options.json cannot find elmo_pt_weights.hdf5 (HTTP lists no folders): both URLs then
    with pytest.raises(DownloadError, match=r"no weights file found beside .*pt/options\.json"):
        resolve_model(served.url + "/pt/options.json", progress=False)
    assert resolve_model(options_file=served.url + "/pt/options.json",
                         weight_file=served.url + "/pt/elmo_pt_weights.hdf5", progress=False)
    with pytest.raises(ValueError, match="not a model file URL"):
        resolve_model(served.url + "/nlpl/", progress=False)
    with pytest.raises(DownloadError, match="404"):
        resolve_model(served.url + "/nowhere/model.zip", progress=False)
    corpus = tmp_path / "in.txt"
    corpus.write_text("Hello world\n")
    assert main(["embed", str(corpus), str(tmp_path / "o.hdf5"), "--all", "--device", "cpu",
                 "--model", served.url + "/nlpl/"]) == 2
    assert not (tmp_path / "o.hdf5").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elmo-fast: error:") and "not a model file URL" in err[0]


# ------------------------------------------------------------------------------- elmo-fast models
def test_list_models(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path))
    rows = {r["name"]: r for r in list_models()}
    assert rows["tiny"]["status"] == "packaged"
    assert rows["tiny"]["bytes"] == os.path.getsize(TINY_WEIGHTS) + os.path.getsize(TINY_OPTIONS)
    assert rows["small"]["status"] == "not cached" and rows["small"]["bytes"] == 0
    small = dl.MODELS["small"]
    (tmp_path / "models" / "small").mkdir(parents=True)
    (tmp_path / "models" / "small" / small.options_filename).write_bytes(b"{}")
    assert {r["name"]: r for r in list_models()}["small"]["status"] == "partial"
    (tmp_path / "models" / "small" / small.weights_filename).write_bytes(b"x" * 10)
    row = {r["name"]: r for r in list_models()}["small"]
    assert row["status"] == "cached" and row["bytes"] == 12 and row["weights_url"] == small.weights_url


def test_models_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in dl.MODELS:
        assert name in out
    assert "packaged" in out and "not cached" in out and str(tmp_path) in out
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["models"]] == list(dl.MODELS)
