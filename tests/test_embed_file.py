"""ElmoEmbedder.embed_file / embed_corpus / read_sentences: allennlp's hdf5 layout, batching by
mode, input checks before any work, streaming and atomic output. A tiny random model keeps it fast."""
from __future__ import annotations

import io
import os

import h5py
import numpy as np
import pytest

from _tiny_model import read_h5, write_tiny_model, one_thread_per_module  # noqa: F401 (an autouse fixture)
from elmo_fast import ElmoEmbedder
from elmo_fast.corpus.layouts import AllennlpWriter
from elmo_fast.corpus.pipeline import QUEUE, EmbedderModel
from elmo_fast.corpus import reader
from elmo_fast.corpus.reader import PathSource
from elmo_fast.embedder import InputError, corpus_batches, embed_corpus, read_sentences

SENTENCES = [
    "The quick brown fox jumps over the lazy dog .",
    "Hello world",
    "a",
    "ELMo embeds every token in context , even ünïcödé ones",
    "one two three",
    "Hello world",                      # a repeat: sentence_to_index maps it to its last index
    "x y",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_elmo"), seed=1)


def embedder(model, stateful=True):
    return ElmoEmbedder(*model, stateful=stateful, progress=False)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ read_sentences
def test_read_sentences_path_text_and_binary_files(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes("\ufeffa b\r\n  c  d \rе ф\n".encode("utf-8"))  # BOM, CRLF, lone CR, Cyrillic
    expected = ["a b", "c  d", "е ф"]
    assert read_sentences(p) == expected
    assert read_sentences(str(p)) == expected
    with open(p, "rb") as f:
        assert read_sentences(f) == expected
    with open(p, encoding="utf-8") as f:
        assert read_sentences(f) == expected
    assert read_sentences(io.StringIO("x\ny z")) == ["x", "y z"]


@pytest.mark.parametrize("content, message", [
    pytest.param(b"a b\n\nc\n   \nd\n", r"empty lines at indexes \[1, 3\] \(line numbers \[2, 4\]\)",
                 id="empty-lines"),
    pytest.param(b"", "no sentences", id="empty-file"),
    pytest.param(b"ok line\nfine\nbad \xff\xfe byte\n",
                 r"line 3 \(index 2\) is not valid UTF-8.*must be UTF-8",
                 id="bad-utf8"),
    pytest.param(b"x\n\xc3", r"line 2 \(index 1\) is not valid UTF-8", id="truncated-utf8"),
])
def test_read_sentences_rejects(tmp_path, content, message):
    p = tmp_path / "in.txt"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_sentences(p)


def test_read_sentences_bad_utf8_through_a_text_stream(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes(b"a\nb\n\x80\n")
    with open(p, encoding="utf-8") as f, pytest.raises(InputError, match=r"line 3 .*UTF-8"):
        read_sentences(f)


def test_read_sentences_missing_file(tmp_path):
    with pytest.raises(InputError, match="input file not found"):
        read_sentences(tmp_path / "nope.txt")


def test_corpus_batches():
    assert corpus_batches([3, 1, 2, 5], 2, by_length=False) == [[0, 1], [2, 3]]
    assert corpus_batches([3, 1, 2, 5, 3], 2, by_length=True) == [[3, 0], [4, 2], [1]]


# ----------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("fmt", ["all", "top", "average"])
def test_formats_shapes_keys_and_index(tiny_model, tmp_path, fmt):
    emb = embedder(tiny_model)
    out = tmp_path / "out.hdf5"
    emb.embed_file(str(write_lines(tmp_path / "in.txt", SENTENCES)), str(out), fmt, batch_size=3,
                   progress=False)
    data, index = read_h5(out)
    assert sorted(data, key=int) == [str(i) for i in range(len(SENTENCES))]
    ref = list(embedder(tiny_model).embed_sentences([s.split() for s in SENTENCES], 3))
    for i, s in enumerate(SENTENCES):
        T = len(s.split())
        assert data[str(i)].dtype == np.float32
        assert data[str(i)].shape == ((3, T, 16) if fmt == "all" else (T, 16))
        expect = {"all": ref[i], "top": ref[i][-1], "average": np.average(ref[i], axis=0)}[fmt]
        np.testing.assert_array_equal(data[str(i)], expect)
    # allennlp: {sentence: "line index"} built in input order (a repeat keeps its last index)
    assert index == {s: str(i) for i, s in enumerate(SENTENCES)}
    assert list(index) == list(dict.fromkeys(SENTENCES)) and index["Hello world"] == "5"


def test_forget_sentences_and_sentence_keys(tiny_model, tmp_path):
    emb = embedder(tiny_model, stateful=False)
    unique = list(dict.fromkeys(SENTENCES)) + ["1/2 cup of tea"]
    src = write_lines(tmp_path / "in.txt", unique)
    emb.embed_file(src, tmp_path / "f.hdf5", "top", forget_sentences=True, progress=False)
    with h5py.File(tmp_path / "f.hdf5", "r") as f:
        assert "sentence_to_index" not in f and len(f) == len(unique)
    emb.embed_file(src, tmp_path / "k.hdf5", "top", use_sentence_keys=True, progress=False)
    with h5py.File(tmp_path / "k.hdf5", "r") as f:
        assert "sentence_to_index" not in f
        for s in unique:
            assert f[s].shape == (len(s.split()), 16)


@pytest.mark.parametrize("lines, message", [
    pytest.param(["a b", "c", "a b"], r"duplicate sentence at indexes 0 and 2", id="duplicate"),
    pytest.param(["a b", "/a b/"], r"duplicate sentence", id="same-hdf5-path"),
    pytest.param(["a", "a/b"], r"would nest inside", id="nesting"),
])
def test_sentence_keys_conflicts_fail_before_any_output(tiny_model, tmp_path, lines, message):
    out = tmp_path / "out.hdf5"
    with pytest.raises(InputError, match=message):
        embedder(tiny_model).embed_file(write_lines(tmp_path / "in.txt", lines), out, use_sentence_keys=True,
                                        progress=False)
    assert os.listdir(tmp_path) == ["in.txt"]


# ---------------------------------------------------------------------------------------- batching
def test_stateful_follows_input_order_like_embed_sentences(tiny_model, tmp_path):
    out = tmp_path / "out.hdf5"
    embedder(tiny_model, stateful=True).embed_file(write_lines(tmp_path / "in.txt", SENTENCES), out,
                                                   batch_size=2, progress=False)
    data, _ = read_h5(out)
    ref = list(embedder(tiny_model, stateful=True).embed_sentences([s.split() for s in SENTENCES], 2))
    for i in range(len(SENTENCES)):
        np.testing.assert_array_equal(data[str(i)], ref[i])
    # the carried state matters: the same sentences alone give other numbers
    alone = embedder(tiny_model, stateful=False).embed_sentence(SENTENCES[4].split())
    assert not np.allclose(data["4"][1:], alone[1:], atol=1e-4)


def test_stateless_is_independent_of_batching_and_order(tiny_model, tmp_path):
    emb = embedder(tiny_model, stateful=False)
    results = []
    n = len(SENTENCES)
    for bs, reverse in ((1, False), (3, False), (64, True)):
        order = SENTENCES[::-1] if reverse else SENTENCES
        out = tmp_path / f"out_{bs}.hdf5"
        emb.embed_file(write_lines(tmp_path / "in.txt", order), out, batch_size=bs, progress=False)
        data, index = read_h5(out)
        assert index == {s: str(i) for i, s in enumerate(order)}
        results.append([data[str(n - 1 - i if reverse else i)] for i in range(n)])
    for i, s in enumerate(SENTENCES):
        alone = emb.embed_sentence(s.split())
        for r in results:
            np.testing.assert_allclose(r[i], alone, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------- streaming / atomic
class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_failure_mid_run_leaves_existing_output_untouched(tiny_model, tmp_path, monkeypatch, exc):
    emb = embedder(tiny_model)
    out = tmp_path / "out.hdf5"
    out.write_bytes(b"previous results")
    calls = []
    real = EmbedderModel.__call__

    def flaky(self, ids):       # the model stage (embed_batch's computation, on ids)
        calls.append(len(ids))
        if len(calls) == 2:
            raise exc()
        return real(self, ids)

    monkeypatch.setattr(EmbedderModel, "__call__", flaky)
    with pytest.raises(exc):
        emb.embed_file(write_lines(tmp_path / "in.txt", SENTENCES), out, batch_size=2, progress=False)
    assert out.read_bytes() == b"previous results"
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.hdf5"]   # no temporary file left


def test_streams_with_a_bounded_look_ahead(tiny_model, tmp_path, monkeypatch):
    """The first datasets are written long before the reader reaches the end of a long input: the
    feeder runs at most a few batches ahead of the writer (bounded queues), never the corpus."""
    emb = embedder(tiny_model)
    lines = [SENTENCES[i % len(SENTENCES)] for i in range(400)]
    read, at_first_write = [], []
    real_blocks, real_counted = PathSource.line_blocks, PathSource.counted_blocks
    real_create = AllennlpWriter._create

    def counting_blocks(self):   # the second pass
        for block in real_blocks(self):
            read.extend([1] * len(block))
            yield block

    def counting_counted(self):   # the first pass, over the bytes
        for stripped, counts in real_counted(self):
            read.extend([1] * len(counts))
            yield stripped, counts

    def create(self, name, *a, **k):
        if not at_first_write and name != "sentence_to_index":
            at_first_write.append(len(read))
        return real_create(self, name, *a, **k)

    monkeypatch.setattr(PathSource, "line_blocks", counting_blocks)
    monkeypatch.setattr(PathSource, "counted_blocks", counting_counted)
    monkeypatch.setattr(reader, "BLOCK", 64)   # a few lines per read (the real one is 1 MB)
    monkeypatch.setattr(AllennlpWriter, "_create", create)
    emb.embed_file(write_lines(tmp_path / "in.txt", lines), tmp_path / "o.hdf5", batch_size=2, progress=False)
    # first pass (400) + at most the batches the two queues and the stages hold (2 sentences each),
    # and the block of lines the feeder is working through (64 bytes: at most 32 lines of one character)
    assert 400 < at_first_write[0] <= 400 + 2 * (2 * QUEUE + 6) + 64 // 2, at_first_write
    assert len(read) == 800


@pytest.mark.parametrize("caller_froze", [False, True])
def test_old_objects_left_out_of_the_collector_during_the_job_only(tiny_model, tmp_path, monkeypatch,
                                                                   caller_froze):
    """The job freezes the objects that exist when it starts (a full collection over torch's objects
    stalls every stage for ~0.1 s) and gives them back to the collector at its end, or on an error;
    a caller's own freeze is left as it was."""
    import gc

    seen = []
    real = EmbedderModel.__call__

    def model(self, ids):
        seen.append(gc.get_freeze_count())
        if len(seen) == 2 and fail:
            raise RuntimeError("model failed")
        return real(self, ids)

    monkeypatch.setattr(EmbedderModel, "__call__", model)
    src = write_lines(tmp_path / "in.txt", SENTENCES)
    try:
        if caller_froze:
            gc.freeze()
        before = gc.get_freeze_count()
        for fail in (False, True):
            seen.clear()
            if fail:
                with pytest.raises(RuntimeError, match="model failed"):
                    embedder(tiny_model).embed_file(src, tmp_path / "o.hdf5", batch_size=2, progress=False)
            else:
                embedder(tiny_model).embed_file(src, tmp_path / "o.hdf5", batch_size=2, progress=False)
            assert seen and min(seen) > 0
            if caller_froze:
                assert gc.get_freeze_count() >= before   # not unfrozen under the caller
            else:
                assert before == 0 and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_embed_corpus_checks_arguments(tiny_model, tmp_path):
    emb = embedder(tiny_model)
    with pytest.raises(ValueError, match="output_format"):
        embed_corpus(emb, ["a"], tmp_path / "o.hdf5", output_format="mean")
    with pytest.raises(ValueError, match="batch_size"):
        embed_corpus(emb, ["a"], tmp_path / "o.hdf5", batch_size=0)
    with pytest.raises(InputError, match="output directory does not exist"):
        embed_corpus(emb, ["a"], tmp_path / "missing" / "o.hdf5")
    with pytest.raises(InputError, match="empty lines at indexes \\[1\\]"):
        embed_corpus(emb, ["a", " "], tmp_path / "o.hdf5")
    assert os.listdir(tmp_path) == []
