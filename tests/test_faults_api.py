"""Issue 10, items 3-6 and 8 (API side): each fault reproduced, each answered with one clear error
(or, for threads, correct results)."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest
import torch

import elmo_fast.ops
from elmo_fast import BiLm, Elmo, ElmoEmbedder, WeightsError, batch_to_ids, load_model
from elmo_fast.cli import main
from elmo_fast.download import packaged_dir

TINY = packaged_dir("tiny")
OPTIONS, WEIGHTS = os.path.join(TINY, "options.json"), os.path.join(TINY, "weights.hdf5")
SENTS = [["The", "cat", "sat", "."], ["Hello", "world"]]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elmo-fast: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


# ------------------------------------------------------------------ 3: bf16 on the CPU
def test_bf16_on_cpu_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ELMO_FAST_MODEL_BASE_URL", "http://127.0.0.1:9/none")  # would fail if reached
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(ValueError, match=r"refused on the CPU.*slower than float32"):
            ElmoEmbedder(model="original", device="cpu", dtype=dtype)
    assert not (tmp_path / "cache").exists()
    emb = ElmoEmbedder(model="tiny", device="cpu")
    with pytest.raises(ValueError, match="refused on the CPU"):
        emb.to(dtype=torch.bfloat16)
    assert emb.dtype == torch.float32
    with pytest.raises(ValueError, match="floating torch.dtype"):
        ElmoEmbedder(model="tiny", dtype=torch.int32)


def test_cli_bf16_on_cpu(tmp_path, capsys):
    corpus = tmp_path / "in.txt"
    corpus.write_text("Hello world\n")
    out = tmp_path / "out.hdf5"
    assert main(["embed", str(corpus), str(out), "--all", "--model", "tiny", "--device", "cpu",
                 "--dtype", "bf16"]) == 2
    _one_line_error(capsys, "--dtype bf16 is refused on the CPU", "fp32")
    assert not out.exists()


# ------------------------------------------------------------------ 4: threads on one module
def _in_two_threads(work):
    """Runs work() in two threads at once; the exceptions they raised."""
    errors = []

    def run():
        try:
            work()
        except Exception as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


@pytest.fixture
def slow_lstm(monkeypatch):
    """Every LSTM layer takes a few ms longer, so two unserialised threads would surely interleave
    between reading the carried state and storing the new one."""
    real = elmo_fast.ops.lstm_layer

    def slow(*args, **kwargs):
        time.sleep(0.003)
        return real(*args, **kwargs)

    monkeypatch.setattr(elmo_fast.ops, "lstm_layer", slow)


def test_stateful_threads_are_serialised(slow_lstm):
    ids = batch_to_ids(SENTS)
    shared = BiLm(OPTIONS, WEIGHTS, stateful=True)
    alone = BiLm(OPTIONS, WEIGHTS, stateful=True)
    n = 12  # calls per thread
    with torch.inference_mode():
        want = [alone(ids)["activations"][-1] for _ in range(2 * n)]
    got = []

    def work():
        for _ in range(n):
            with torch.inference_mode():
                got.append(shared(ids)["activations"][-1])

    assert not _in_two_threads(work)
    # every call continued the state of exactly one earlier call: the outputs are the sequential
    # ones (same input each call, so the order of calls does not matter), none lost or duplicated
    assert len(got) == 2 * n
    unmatched = list(want)
    for g in got:
        k = next((k for k, w in enumerate(unmatched) if torch.equal(g, w)), None)
        assert k is not None, "an output that no sequential run gives: a state update was lost"
        unmatched.pop(k)
    for a, b in zip(shared._states, alone._states):
        assert torch.equal(a, b)


def test_stateless_threads_run_concurrently(monkeypatch):
    """Two stateless calls are inside the LSTM at the same time (a barrier both must reach)."""
    barrier = threading.Barrier(2, timeout=20)
    real = elmo_fast.ops.lstm_layer

    def meet(*args, **kwargs):
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(elmo_fast.ops, "lstm_layer", meet)
    bilm = BiLm(OPTIONS, WEIGHTS, stateful=False)
    ids = batch_to_ids(SENTS)

    def work():
        with torch.inference_mode():
            bilm(ids)

    errors = _in_two_threads(work)
    assert not errors, errors  # a BrokenBarrierError here would mean the calls were serialised


# ------------------------------------------------------------------ 5: options validation
def _model(tmp_path, mutate=None, weights=WEIGHTS):
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    opts = json.load(open(OPTIONS))
    if mutate:
        mutate(opts)
    (d / "options.json").write_text(json.dumps(opts))
    shutil.copy(weights, d / "weights.hdf5")
    return str(d / "options.json"), str(d / "weights.hdf5")


def _set(path, value):
    """A mutation of options.json: path like 'lstm.dim' or 'char_cnn.embedding.dim'."""
    *parents, key = path.split(".")

    def mutate(opts):
        for p in parents:
            opts = opts[p]
        opts[key] = value
    return mutate


@pytest.mark.parametrize("path, value, pattern", [
    pytest.param("char_cnn.n_highway", -1, r"char_cnn\.n_highway must be an integer >= 0, got -1",
                 id="highway-neg"),
    pytest.param("lstm.dim", 64.7, r"lstm\.dim must be an integer >= 1, got 64\.7", id="dim-float"),
    pytest.param("lstm.dim", True, r"lstm\.dim must be an integer >= 1, got True", id="dim-bool"),
    pytest.param("lstm.n_layers", "2", r"lstm\.n_layers must be an integer", id="n_layers-str"),
    pytest.param("lstm.n_layers", 0, r"lstm\.n_layers must be an integer >= 1", id="n_layers-0"),
    pytest.param("lstm.cell_clip", "3", r"lstm\.cell_clip must be a number or null", id="clip-str"),
    pytest.param("lstm.use_skip_connections", "yes", r"lstm\.use_skip_connections must be true or false",
                 id="skip-str"),
    pytest.param("char_cnn.n_characters", 300, r"char_cnn\.n_characters must be 261 or 262", id="n_chars"),
    pytest.param("char_cnn.filters", [[1, 4], [2, 0]], r"char_cnn\.filters\[1\] count must be an integer",
                 id="filter-count-0"),
    pytest.param("char_cnn.filters", [], r"char_cnn\.filters must be a list of", id="filters-empty"),
    pytest.param("char_cnn.embedding.dim", 4.5, r"char_cnn\.embedding\.dim must be an integer",
                 id="char-dim"),
])
def test_bad_option_values(tmp_path, path, value, pattern):
    opath, wpath = _model(tmp_path, _set(path, value))
    with pytest.raises(WeightsError, match=r"options\.json: " + pattern):
        load_model(opath, wpath)


def test_integral_floats_are_integers(tmp_path):
    opath, wpath = _model(tmp_path, _set("lstm.dim", 64.0))
    assert load_model(opath, wpath).options.cell_dim == 64


@pytest.mark.parametrize("mutate, dataset, why", [
    pytest.param(lambda o: o["lstm"].update(n_layers=1), "RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/B",
                 "lstm.n_layers is 1", id="fewer-lstm-layers"),
    pytest.param(lambda o: o["char_cnn"].update(n_highway=1), "CNN_high_1/W_carry", "n_highway is 1",
                 id="fewer-highway"),
    pytest.param(lambda o: o["char_cnn"].update(filters=o["char_cnn"]["filters"][:4]), "CNN/W_cnn_4",
                 "filters has 4 entries", id="fewer-filters"),
])
def test_weights_with_unused_layers_refused(tmp_path, mutate, dataset, why):
    opath, wpath = _model(tmp_path, mutate)
    with pytest.raises(WeightsError) as e:
        load_model(opath, wpath)
    msg = str(e.value)
    assert msg.startswith(wpath) and repr(dataset) in msg and why in msg


# ------------------------------------------------------------------ 6: API edges
@pytest.mark.parametrize("bad", [300, 262, -5])
def test_out_of_range_character_ids(bad):
    elmo = Elmo(OPTIONS, WEIGHTS, 1, dropout=0.0, stateful=False)
    ids = batch_to_ids(SENTS)
    ids[0, 1, 3] = bad
    with pytest.raises(ValueError,
                       match=rf"character ids out of range: {bad}; valid ids are 0 \(padding\) to 261"):
        elmo(ids)


def test_many_bad_ids_are_summarised():
    elmo = Elmo(OPTIONS, WEIGHTS, 1, dropout=0.0, stateful=False)
    ids = batch_to_ids(SENTS)
    ids[0, 0, :20] = torch.arange(1000, 1020)
    with pytest.raises(ValueError, match=r"1000, 1001, .*1009, \.\.\. \(20 distinct\)"):
        elmo(ids)


@pytest.mark.parametrize("keep", [False, True], ids=["plain", "boundaries"])
def test_empty_batch(keep):
    elmo = Elmo(OPTIONS, WEIGHTS, 2, dropout=0.0, keep_sentence_boundaries=keep)
    out = elmo(batch_to_ids([]))
    T = 2 if keep else 0
    assert [r.shape for r in out["elmo_representations"]] == [(0, T, 32)] * 2
    assert out["mask"].shape == (0, T) and out["mask"].dtype == torch.long
    # as for [[]]: a batch of one empty sentence
    one = elmo(batch_to_ids([[]]))
    assert one["elmo_representations"][0].shape == (1, T, 32)
    # 4-D input with no sentences
    four = elmo(torch.zeros(0, 3, 5, 50, dtype=torch.long))
    assert four["elmo_representations"][0].shape == (0, 3, 5 + T, 32)
    assert elmo._elmo_lstm._states is None or elmo._elmo_lstm._states[0].shape[1] <= 1


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_embed_sentences_batch_size(bad):
    emb = ElmoEmbedder(model="tiny")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        emb.embed_sentences(SENTS, batch_size=bad)  # refused at the call, not at the first next()


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_unsupported_device_types(tmp_path, capsys, device):
    with pytest.raises(ValueError,
                       match=rf"device '{device}' is not supported: elmo_fast runs on cpu or cuda"):
        ElmoEmbedder(model="tiny", device=device)
    corpus = tmp_path / "in.txt"
    corpus.write_text("Hello world\n")
    assert main(["embed", str(corpus), str(tmp_path / "o.hdf5"), "--all", "--model", "tiny",
                 "--device", device]) == 2
    _one_line_error(capsys, f"device '{device}' is not supported")
    assert main(["info", "--device", device]) == 2
    _one_line_error(capsys, "not supported")
