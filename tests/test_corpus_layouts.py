"""The corpus job's outputs: every layout x dtype-out x pool read back through open_embeddings equals
the in-memory ElmoEmbedder result; the allennlp layout equals the earlier implementation's values
bit for bit; streaming sources; empty-line modes; order and keys under bucketing; stage failures."""
from __future__ import annotations

import gzip
import io
import json
import os
import sys
import threading

import h5py
import numpy as np
import pytest
import torch

from _tiny_model import read_h5, write_tiny_model, one_thread_per_module  # noqa: F401 (an autouse fixture)
from elmo_fast import ElmoEmbedder, cli, open_embeddings
from elmo_fast.corpus import InputError, embed_corpus, layouts
from elmo_fast.corpus.batching import Window
from elmo_fast.corpus.pipeline import EmbedderModel, select_layers

SENTENCES = [
    "The quick brown fox jumps over the lazy dog .",
    "Hello world",
    "a",
    "ELMo embeds every token in context , even ünïcödé ones",
    "one two three",
    "Hello world",
    "x y",
    "a b c d e f g h i j k l m n o p",
    "z",
]
# stored-value tolerance of each dtype-out relative to the largest value (its rounding: half an ulp)
ROUNDING = {"float32": 0.0, "float16": 2 ** -11, "bfloat16": 2 ** -8}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_elmo"), seed=3)


@pytest.fixture(scope="module")
def stateless(model):
    return ElmoEmbedder(*model, stateful=False, progress=False)


@pytest.fixture(scope="module")
def alone(stateless):
    return [stateless.embed_sentence(s.split()) for s in SENTENCES]


def expected(ref: np.ndarray, fmt: str, pool: str) -> np.ndarray:
    r = {"all": ref, "top": ref[-1], "average": np.average(ref, axis=0)}[fmt]
    return r.mean(-2) if pool == "mean" else r


def assert_stored(got: np.ndarray, ref: np.ndarray, dtype_out: str):
    assert got.shape == ref.shape
    assert not np.isnan(got).any()
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    # float32: the stateless batch-independence tolerance; low precision: its rounding on top
    assert err <= 2e-6 * scale + ROUNDING[dtype_out] * scale, err


# --------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("pool", ["none", "mean"])
@pytest.mark.parametrize("dtype_out", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["allennlp", "flat"])
def test_round_trip_through_open_embeddings(stateless, alone, tmp_path, layout, dtype_out, pool):
    done = []
    for fmt in ("all", "top", "average"):
        out = tmp_path / f"{fmt}.h5"
        done.append(out.name)
        embed_corpus(stateless, SENTENCES, out, fmt, batch_size=2, progress=False, layout=layout,
                     dtype_out=dtype_out, pool=pool, window=4)
        with open_embeddings(out) as emb:
            assert len(emb) == len(SENTENCES)
            assert emb.layout == layout and emb.dtype == dtype_out and emb.pooled == (pool == "mean")
            for i in range(len(SENTENCES)):
                got = emb[i]
                assert got.dtype == (np.float16 if dtype_out == "float16" else np.float32)
                assert_stored(got, expected(alone[i], fmt, pool), dtype_out)
            if layout == "flat":
                np.testing.assert_array_equal(emb.lengths, [len(s.split()) for s in SENTENCES])
                assert [emb.sentence(i) for i in range(len(emb))] == SENTENCES
        assert sorted(os.listdir(tmp_path)) == sorted(done)       # no temporaries or pieces left


@pytest.mark.parametrize("dtype_out", ["float32", "bfloat16"])
def test_many_chunks_change_nothing(stateless, alone, tmp_path, monkeypatch, dtype_out):
    """Chunks of 3 rows (so whole chunks, tails carried across windows and a padded last chunk all
    occur) give the same vectors."""
    monkeypatch.setattr(layouts, "_CHUNK_BYTES", 3 * 16 * 4)
    out = tmp_path / "o.h5"
    embed_corpus(stateless, SENTENCES * 3, out, "all", batch_size=2, progress=False, layout="flat",
                 dtype_out=dtype_out, window=4)
    with h5py.File(out, "r") as f:
        assert f["layer_0"].chunks[0] == (3 if dtype_out == "float32" else 6)
    with open_embeddings(out) as emb:
        for i in range(len(emb)):
            assert_stored(emb[i], alone[i % len(SENTENCES)], dtype_out)


@pytest.mark.parametrize("dtype_out", ["float16", "bfloat16"])
def test_window_buffers_come_back_only_once_written(stateless, alone, tmp_path, monkeypatch, dtype_out):
    """The writer goes on to the next window while a window's rows are still being written (the
    buffer comes back to the model stage from the writes-behind thread once they are): with every
    write slowed down, and windows of 2 sentences cycling through the 3 buffers, no row is
    overwritten before it is written."""
    import time

    from elmo_fast.corpus import diskio

    real, rng = diskio.write_all_at, np.random.default_rng(0)

    def slow(f, parts, offset):
        time.sleep(float(rng.uniform(0.005, 0.03)))
        real(f, parts, offset)

    monkeypatch.setattr(diskio, "write_all_at", slow)
    monkeypatch.setattr(layouts, "_CHUNK_BYTES", 2 * 16 * 2)   # whole chunks in most windows
    out = tmp_path / "o.h5"
    embed_corpus(stateless, SENTENCES * 3, out, "all", batch_size=2, progress=False, layout="flat",
                 dtype_out=dtype_out, window=2)
    with open_embeddings(out) as emb:
        assert len(emb) == 3 * len(SENTENCES)
        for i in range(len(emb)):
            assert_stored(emb[i], alone[i % len(SENTENCES)], dtype_out)


def test_no_thread_of_the_job_outlives_it(stateless, tmp_path, monkeypatch):
    """Every thread a job starts is joined before it returns, the window buffers' maker too (a
    daemon thread still zeroing a buffer when the interpreter exits aborts the process): here every
    buffer after the first is slow to make, and the job needs only the first."""
    import time

    from elmo_fast.corpus import pipeline

    class SlowZeros:   # pipeline's torch, whose zeros takes 0.5 s after its first call
        calls = 0

        def __getattr__(self, name):
            return getattr(torch, name)

        def zeros(self, *a, **k):
            SlowZeros.calls += 1
            if SlowZeros.calls > 1:
                time.sleep(0.5)
            return torch.zeros(*a, **k)

    monkeypatch.setattr(pipeline, "torch", SlowZeros())
    before = set(threading.enumerate())   # other tests' writers may have left theirs
    embed_corpus(stateless, SENTENCES[:2], tmp_path / "o.h5", "top", batch_size=2, progress=False,
                 layout="flat", dtype_out="float16", window=4)
    assert SlowZeros.calls >= 1
    assert [t.name for t in set(threading.enumerate()) - before] == []


def test_flat_is_readable_with_plain_h5py(stateless, alone, tmp_path):
    out = tmp_path / "flat.h5"
    embed_corpus(stateless, SENTENCES, out, "all", progress=False, layout="flat", dtype_out="bfloat16")
    with h5py.File(out, "r") as f:
        assert f.attrs["layout"] == "flat" and f.attrs["dtype"] == "bfloat16"
        off = f["offsets"][()]
        assert off.dtype == np.int64 and off.shape == (len(SENTENCES) + 1,) and off[0] == 0
        assert f["layer_2"].shape == (off[-1], 16) and f["layer_2"].dtype == np.uint16
        assert f["layer_2"].attrs["dtype"] == "bfloat16"
        i = 3
        bits = f["layer_2"][off[i]:off[i + 1]]
        vals = (bits.astype(np.uint32) << 16).view(np.float32)       # the documented decoding
        np.testing.assert_array_equal(f["lines"][()], np.arange(len(SENTENCES)))
        assert json.loads(f.attrs["options"])["proj_dim"] == 8
    assert_stored(vals, alone[i][2], "bfloat16")


@pytest.mark.parametrize("dtype_out", ["float32", "float16", "bfloat16"])
def test_convert_into_reuses_its_staging_and_equals_to_storage(dtype_out):
    """The flat layout's batch conversion: bit for bit to_storage's values, on strided inputs, into
    the same memory while it is large enough, into new memory when a batch is larger."""
    from elmo_fast.corpus.place import convert_into

    g = torch.Generator().manual_seed(3)
    staging = None
    bases = []
    for shape in [(4, 3, 7, 5), (2, 3, 5, 5), (6, 3, 9, 5), (1, 3, 1, 5)]:
        acts = torch.randn(shape, generator=g) * 1e3
        x = acts[:, -1:]                      # a strided view, as --top selects it
        staging = convert_into(x, dtype_out, staging)
        want = layouts.to_storage(x, dtype_out)
        got = staging.view(torch.int16) if dtype_out == "bfloat16" else staging
        assert got.shape == x.shape and got.dtype == want.dtype
        assert torch.equal(got, want)
        bases.append((staging._base if staging._base is not None else staging).data_ptr())
    assert bases[0] == bases[1] and bases[1] != bases[2] and bases[2] == bases[3]


def test_bfloat16_rounds_to_nearest_even():
    x = torch.tensor([1.0 + 2 ** -9, 1.0 + 3 * 2 ** -9, -2.5, 3.0e38])
    bits = layouts.to_storage(x, "bfloat16").numpy().view(np.uint16)
    np.testing.assert_array_equal(layouts.decode(bits, "bfloat16"), x.to(torch.bfloat16).float().numpy())


def test_average_is_np_average_bit_for_bit():
    acts = torch.randn(3, 3, 7, 33)
    got = select_layers(acts, "average")[:, 0].numpy()
    want = np.stack([np.average(a, axis=0) for a in acts.numpy()])
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------- allennlp = before
def _legacy_embed_corpus(embedder, sentences, out, fmt, batch_size, by_length):
    """The implementation this package replaced (values and index only): the oracle."""
    tokens = [s.split() for s in sentences]
    order = (sorted(range(len(tokens)), key=lambda i: -len(tokens[i])) if by_length
             else list(range(len(tokens))))
    data = {}
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        for i, e in zip(idx, embedder.embed_batch([tokens[i] for i in idx])):
            data[str(i)] = {"all": e, "top": e[-1], "average": np.average(e, axis=0)}[fmt]
    return data, {s: str(i) for i, s in enumerate(sentences)}


@pytest.mark.parametrize("fmt", ["all", "top", "average"])
@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
def test_allennlp_layout_identical_to_before(model, tmp_path, fmt, stateful):
    out = tmp_path / "out.hdf5"
    ElmoEmbedder(*model, stateful=stateful, progress=False).embed_file(
        io.StringIO("\n".join(SENTENCES)), str(out), fmt, batch_size=3, progress=False)
    data, index = read_h5(out)
    old, old_index = _legacy_embed_corpus(ElmoEmbedder(*model, stateful=stateful, progress=False), SENTENCES,
                                          out, fmt, 3, by_length=not stateful)
    assert sorted(data) == sorted(old)
    for k in old:
        assert data[k].dtype == np.float32
        np.testing.assert_array_equal(data[k], old[k])
    assert index == old_index
    with h5py.File(out, "r") as f:
        assert f["sentence_to_index"][0].decode() == json.dumps(old_index)


# ------------------------------------------------------------------------------------- sources
def test_streams_from_a_generator_stdin_and_gzip(stateless, alone, tmp_path, capsys, model, monkeypatch):
    gen_out = tmp_path / "gen.h5"
    embed_corpus(stateless, (s for s in SENTENCES), gen_out, "top", progress=False, layout="flat")
    gz = tmp_path / "in.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(SENTENCES) + "\n")
    embed_corpus(stateless, str(gz), tmp_path / "gz.h5", "top", progress=False, layout="flat")
    data = "\n".join(SENTENCES).encode()
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BufferedReader(io.BytesIO(data))})())
    rc = cli.main(["embed", "-", str(tmp_path / "stdin.h5"), "--top", "--model", os.path.dirname(model[0]),
                   "--stateless", "--layout", "flat", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    for name in ("gen.h5", "gz.h5", "stdin.h5"):
        with open_embeddings(tmp_path / name) as emb:
            assert len(emb) == len(SENTENCES)
            for i in range(len(SENTENCES)):
                assert_stored(emb[i], alone[i][-1], "float32")


def test_a_generator_with_an_empty_sentence_writes_nothing(stateless, tmp_path):
    with pytest.raises(InputError, match=r"empty lines at indexes \[2\]"):
        embed_corpus(stateless, iter(["a", "b", "  ", "c"]), tmp_path / "o.h5", progress=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("layout", ["allennlp", "flat"])
def test_empty_line_modes(stateless, alone, tmp_path, layout):
    lines = ["a b", "", "c", "   ", "d e f"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"empty lines at indexes \[1, 3\].*--empty-lines"):
        embed_corpus(stateless, str(src), tmp_path / "e.h5", progress=False, layout=layout)
    embed_corpus(stateless, str(src), tmp_path / "keep.h5", "all", progress=False, layout=layout,
                 empty_lines="keep")
    embed_corpus(stateless, str(src), tmp_path / "skip.h5", "all", progress=False, layout=layout,
                 empty_lines="skip")
    with open_embeddings(tmp_path / "keep.h5") as keep, open_embeddings(tmp_path / "skip.h5") as skip:
        assert len(keep) == 5 and len(skip) == 3
        assert keep[1].shape == (3, 0, 16) and keep[3].shape == (3, 0, 16)
        for k, s in ((0, 0), (2, 1), (4, 2)):
            ref = stateless.embed_sentence(lines[k].split())
            assert_stored(keep[k], ref, "float32")
            assert_stored(skip[s], ref, "float32")
    if layout == "flat":
        with h5py.File(tmp_path / "skip.h5", "r") as f:
            np.testing.assert_array_equal(f["lines"][()], [0, 2, 4])      # input line of each sentence


# ----------------------------------------------------------------------------- order and keys
def test_order_and_keys_follow_the_input_under_bucketing(stateless, alone, tmp_path):
    lines = [SENTENCES[(7 * i) % len(SENTENCES)] for i in range(40)]
    results = []
    for bs, bt, w in ((1, None, 5), (4, None, 7), (64, 12, 16), (3, 40, 1024)):
        out = tmp_path / f"o{bs}_{bt}_{w}.h5"
        embed_corpus(stateless, lines, out, "all", batch_size=bs, batch_tokens=bt, window=w, progress=False)
        data, index = read_h5(out)
        assert index == {s: str(i) for i, s in enumerate(lines)}
        assert sorted(data, key=int) == [str(i) for i in range(len(lines))]
        results.append(data)
    for i, s in enumerate(lines):
        ref = alone[SENTENCES.index(s)]
        for data in results:
            assert_stored(data[str(i)], ref, "float32")


def test_batches_respect_the_token_budget(stateless, tmp_path, monkeypatch):
    seen = []
    real = EmbedderModel.__call__

    def spy(self, ids):
        seen.append(ids.shape[0] * ids.shape[1])   # rows x longest sentence
        return real(self, ids)

    monkeypatch.setattr(EmbedderModel, "__call__", spy)
    embed_corpus(stateless, SENTENCES * 4, tmp_path / "o.h5", "top", batch_size=64, batch_tokens=20,
                 progress=False)
    longest = max(len(s.split()) for s in SENTENCES)
    assert seen and all(n <= 20 or n == longest for n in seen), seen


# ------------------------------------------------------------------------------- stage failures
class _Boom(Exception):
    pass


@pytest.mark.parametrize("stage", ["feeder", "model", "writer"])
def test_a_stage_raising_mid_job_leaves_nothing(stateless, tmp_path, monkeypatch, stage):
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    calls = {"model": 0}
    real_model, real_ids, real_end = EmbedderModel.__call__, Window.batch_ids, layouts.FlatWriter.end_window

    def model_call(self, ids):
        calls["model"] += 1
        if stage == "model" and calls["model"] == 3:
            raise _Boom("model")
        return real_model(self, ids)

    def ids_call(self, j):
        if stage == "feeder" and self.text[self.batches[j][0]] == "x y":
            raise _Boom("feeder")
        return real_ids(self, j)

    def end_window(self, w):
        if stage == "writer" and w.start >= 4:
            raise _Boom("writer")
        return real_end(self, w)

    monkeypatch.setattr(EmbedderModel, "__call__", model_call)
    monkeypatch.setattr(Window, "batch_ids", ids_call)
    monkeypatch.setattr(layouts.FlatWriter, "end_window", end_window)
    lines = SENTENCES * 20
    with pytest.raises(_Boom, match=stage):
        embed_corpus(stateless, lines, out, "top", batch_size=1, window=4, progress=False, layout="flat")
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]          # no temporary, no pieces folder
    if stage == "writer":  # the model stopped soon after the writer failed
        assert calls["model"] < len(lines) // 2, calls


def test_failing_to_make_window_buffers_stops_the_job_and_leaves_nothing(stateless, tmp_path, monkeypatch):
    from elmo_fast.corpus.pipeline import WindowBuffers

    made = []

    def make(self, rows=0):   # the writer's own thread makes them as the job starts
        made.append(threading.current_thread().name)
        raise MemoryError("no room for the window buffers")

    monkeypatch.setattr(WindowBuffers, "make", make)
    out = tmp_path / "out.h5"
    with pytest.raises(MemoryError, match="window buffers"):
        embed_corpus(stateless, SENTENCES * 5, out, "top", batch_size=2, window=4, progress=False,
                     layout="flat", dtype_out="float16")
    assert "elmo-buffers" in made
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ window buffers
def _window(start, lengths):
    from elmo_fast.corpus.batching import Window

    n = len(lengths)
    return Window(start, list(range(n)), ["x"] * n, [["x"] * k for k in lengths], np.asarray(lengths))


def test_window_buffers_are_bounded_reused_and_grow_when_needed():
    from elmo_fast.corpus.layouts import OutputSpec
    from elmo_fast.corpus.pipeline import WindowBuffers, _Pipeline, _Stop

    spec = OutputSpec(layout="flat", output_format="all", num_layers=3, dim=4)
    bufs = WindowBuffers(_Pipeline(), spec, count=2, rows_hint=10)
    a = bufs.take(_window(0, [3, 4]))
    assert bufs.made == 2 and bufs.free.qsize() == 1   # all made at the first window: memory taken at once
    b = bufs.take(_window(2, [10]))
    assert (a._base == 0).all() and (b._base == 0).all()          # and written (resident), not just reserved
    assert a.shape == (3, 7, 4) and b.shape == (3, 10, 4)
    assert a._base.numel() == b._base.numel() == 3 * 10 * 4       # made at the hinted size
    bufs.give(a)
    c = bufs.take(_window(3, [2, 2]))
    assert c._base.data_ptr() == a._base.data_ptr()               # reused, not a third one
    bufs.give(b)
    d = bufs.take(_window(5, [20, 1]))                            # larger than any: replaced
    assert d.shape == (3, 21, 4) and d._base.data_ptr() != b._base.data_ptr()
    assert bufs.made == 2
    bufs.p.stop.set()                                             # both out: take waits, until stopped
    with pytest.raises(_Stop):
        bufs.take(_window(7, [1]))


def test_scan_counts_the_largest_window():
    from elmo_fast.corpus.reader import open_source, scan

    lines = ["a b", "c", "d e f", "g", "h i j k", "l"]   # windows of 2: 3, 4, 5 tokens
    assert scan(open_source(lines), window=2).window_tokens == 5
    assert scan(open_source(lines), window=4).window_tokens == 7
    assert scan(open_source(lines[:5] + [""]), "skip", window=2).window_tokens == 4
