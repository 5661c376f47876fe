"""h5flat.ChunkedFile (the flat layout's vectors: chunked datasets whose structure is written without
libhdf5): libhdf5 reads them as its own (same object header messages, byte for byte, and the same
chunk index keys as libhdf5 writes for the same dataset), at every B-tree depth, and can extend the
file; rows gathered from parts of any size land in order; its writes fail like the allennlp file's."""
from __future__ import annotations

import os
import struct

import h5py
import numpy as np
import pytest
from _faults import fail_nth_write
from test_corpus_h5pack import _header_addr, _messages

from elmo_fast.corpus import h5flat
from elmo_fast.corpus.diskio import GuardedFile, H5Output, OutputWriteError

DTYPES = [np.float32, np.float16, np.uint16]


def _rows(rng, n, dim, dtype):
    if dtype == np.uint16:
        return rng.integers(1, 60000, (n, dim)).astype(dtype)
    return rng.standard_normal((n, dim)).astype(dtype)


def _split(rng, a, most=9):
    """a's rows as consecutive parts of random sizes (0 included), some of them views, some copies."""
    parts, i = [], 0
    while i < len(a):
        n = int(rng.integers(0, most + 1))
        p = a[i:i + n]
        parts.append(p.copy() if rng.random() < 0.5 else p)
        i += len(p)
    return parts


def _chunked(path, data, chunk, calls=3, seed=0):
    """A finished ChunkedFile at path with datasets "a" and "b" holding data[name], each appended in
    `calls` calls of random parts; returns the ChunkedFile."""
    rng = np.random.default_rng(seed)
    names = sorted(data)
    a0 = data[names[0]]
    g = GuardedFile(str(path))
    cf = h5flat.ChunkedFile(g, names, a0.shape[1], a0.dtype, chunk)
    for k, name in enumerate(names):
        cuts = np.sort(rng.integers(0, len(data[name]) + 1, calls - 1)).tolist()
        for a, b in zip([0] + cuts, cuts + [len(data[name])]):
            cf.append(k, _split(rng, data[name][a:b]))
    cf.finish()
    g.close()
    return cf


def _libhdf5(path, data, chunk):
    """The same datasets made by libhdf5 (libver earliest): resized, every chunk written whole."""
    with h5py.File(path, "w") as f:
        for name, a in sorted(data.items()):
            ds = f.create_dataset(name, (0, a.shape[1]), maxshape=(None, a.shape[1]), dtype=a.dtype,
                                  chunks=(chunk, a.shape[1]))
            ds.resize(len(a), 0)
            for r in range(0, len(a), chunk):
                block = np.zeros((chunk, a.shape[1]), a.dtype)
                block[:len(a) - r] = a[r:r + chunk]
                ds.id.write_direct_chunk((r, 0), block)


def _tree(raw: bytes, layout: bytes):
    """(level, entries used, keys) of every node of the chunk B-tree named by a layout message body,
    depth first; keys: (chunk bytes, filter mask, offsets...)."""
    assert layout[:2] == b"\x03\x02"   # version 3, chunked
    nd = layout[2]
    (root,) = struct.unpack_from("<Q", layout, 3)
    out = []

    def walk(at):
        sig, kind, level, n = struct.unpack_from("<4sBBH", raw, at)
        assert sig == b"TREE" and kind == 1
        pos, keys, children = at + 24, [], []
        for i in range(n + 1):
            keys.append(struct.unpack_from(f"<II{nd}Q", raw, pos))
            pos += 8 + 8 * nd
            if i < n:
                children.append(struct.unpack_from("<Q", raw, pos)[0])
                pos += 8
        out.append((level, n, keys))
        if level:
            for c in children:
                walk(c)

    if root != h5flat.UNDEF:
        walk(root)
    return out


def _structure(path):
    raw = open(path, "rb").read()
    with h5py.File(path, "r") as f:
        addrs = {name: _header_addr(f, name) for name in f}
    out = {}
    for name, addr in addrs.items():
        msgs = _messages(raw, addr)
        layout = [body for kind, _, body in msgs if kind == 8][0]
        # the layout message without the B-tree address (files differ in where things lie)
        out[name] = ([(kind, flags, body if kind != 8 else body[:3] + body[11:])
                      for kind, flags, body in msgs], _tree(raw, layout))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [0, 2, 7, 9, 63 * 3 - 1], ids=str)
def test_headers_and_chunk_index_are_the_ones_libhdf5_writes(tmp_path, dtype, rows):
    """Up to 63 chunks (one B-tree node, not full): every message of the object header and every key
    of the chunk index as libhdf5 writes them, the last partial chunk included. (In a full node and in
    split ones libhdf5's last key is the last chunk's offset with the row dimension not advanced, and
    its nodes are split where its inserts left them; its reader takes our keys, which are those of
    the unfull node, at every depth: the next test.)"""
    rng = np.random.default_rng(rows)
    data = {"a": _rows(rng, rows, 5, dtype), "b": _rows(rng, rows, 5, dtype)}
    _chunked(tmp_path / "ours.h5", data, 3)
    _libhdf5(tmp_path / "theirs.h5", data, 3)
    ours, theirs = _structure(tmp_path / "ours.h5"), _structure(tmp_path / "theirs.h5")
    assert ours == theirs
    assert [len(t) for _, t in ours.values()] == [1 if rows else 0] * 2


@pytest.mark.parametrize("chunks", [1, 63, 64, 65, 64 * 64, 64 * 64 + 1], ids=str)
def test_every_row_reads_back_at_every_tree_depth(tmp_path, chunks):
    rng = np.random.default_rng(chunks)
    rows = 2 * chunks - 1   # the last chunk half full
    data = {"a": _rows(rng, rows, 3, np.float16), "b": _rows(rng, rows, 3, np.float16)}
    cf = _chunked(tmp_path / "o.h5", data, 2, calls=5, seed=chunks)
    with h5py.File(tmp_path / "o.h5", "r") as f:
        for name, a in data.items():
            ds = f[name]
            assert ds.shape == a.shape and ds.chunks == (2, 3) and ds.maxshape == (None, 3)
            assert ds.id.get_num_chunks() == chunks
            np.testing.assert_array_equal(ds[()], a)
            _, last = ds.id.read_direct_chunk((rows - 1, 0))   # the padding past the extent: zeros
            assert not np.frombuffer(last, np.float16)[3:].any()
    levels = {name: t[0][0] for name, (_, t) in _structure(tmp_path / "o.h5").items()}
    assert levels == dict.fromkeys("ab", 0 if chunks <= 64 else 1 if chunks <= 64 * 64 else 2)
    raw = open(tmp_path / "o.h5", "rb").read()
    assert len(raw) == cf.eof


def test_libhdf5_extends_the_file(tmp_path):
    """h5py ("r+") resizes and writes our datasets, adds datasets and attributes: all read back."""
    rng = np.random.default_rng(1)
    data = {"a": _rows(rng, 40, 4, np.float32), "b": _rows(rng, 0, 4, np.float32)}
    g = GuardedFile(str(tmp_path / "o.h5"))
    cf = h5flat.ChunkedFile(g, ["a", "b"], 4, np.float32, 8)
    cf.append(0, _split(rng, data["a"]))
    cf.finish()
    f = cf.open_h5()
    more = _rows(rng, 30, 4, np.float32)
    f["a"].resize(70, 0)
    f["a"][40:] = more
    f["b"].resize(3, 0)
    f["b"][:] = more[:3]
    f["a"].attrs["dtype"] = "float32"
    f.create_dataset("offsets", data=np.arange(5))
    f.attrs["layout"] = "flat"
    f.close()
    g.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["a"][()], np.concatenate([data["a"], more]))
        np.testing.assert_array_equal(f["b"][()], more[:3])
        assert f["a"].attrs["dtype"] == "float32" and f.attrs["layout"] == "flat"
        np.testing.assert_array_equal(f["offsets"][()], np.arange(5))


def test_parts_may_change_once_drained(tmp_path):
    """After drain the parts are free again: the rows of a partial chunk were copied, and a chunk
    completed from such rows does not read the tail that later rows overwrite."""
    g = GuardedFile(str(tmp_path / "o.h5"))
    cf = h5flat.ChunkedFile(g, ["v"], 2, np.float32, 4)
    want = []
    for i in range(7):
        a = np.full((3, 2), i, np.float32)
        cf.append(0, [a])
        cf.drain()
        want.append(a.copy())
        a[:] = -1
    cf.finish()
    g.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["v"][()], np.concatenate(want))


def test_after_is_called_once_the_parts_before_it_are_written(tmp_path, monkeypatch):
    """`after(fn)`: fn runs in the writes-behind thread once every chunk handed over before it is
    written (the caller goes on meanwhile and reuses the parts only then), at once when none is in
    flight, and after a failed write too (the failure is the guard's)."""
    import threading

    from elmo_fast.corpus import diskio

    out = H5Output(str(tmp_path / "o.h5"), "o.h5", create=False)
    cf = h5flat.ChunkedFile(out.guard, ["v"], 2, np.float32, 4, limit=8)   # 5 appends wait at once
    now = []
    cf.after(lambda: now.append(1))            # nothing in flight: called here
    assert now == [1]
    gate, real = threading.Event(), diskio.write_all_at
    written, released = [], []

    def slow(f, parts, offset):
        assert gate.wait(30)
        real(f, parts, offset)
        written.append(offset)

    monkeypatch.setattr(diskio, "write_all_at", slow)
    want = []
    for i in range(5):
        a = np.full((4 * (i + 1), 2), i, np.float32)   # whole chunks only: nothing copied to the tail
        cf.append(0, [a])
        want.append(a.copy())

        def release(a=a, n=len(written)):
            released.append((n, len(written)))
            a[:] = -1                          # reused: rows already written are not changed by it
        cf.after(release)
    assert released == [] and written == []    # add returned with all of it still in flight
    gate.set()
    cf.finish()
    assert [n for _, n in released] == [1, 2, 3, 4, 5]   # each after the writes handed over before it
    out.check()
    out.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["v"][()], np.concatenate(want))

    out = H5Output(str(tmp_path / "p.h5"), "the-output.h5", create=False)
    cf = h5flat.ChunkedFile(out.guard, ["v"], 2, np.float32, 4)
    monkeypatch.setattr(diskio, "write_all_at", real)
    fail_nth_write(monkeypatch, 1)
    after_failure = []
    for _ in range(2):
        cf.append(0, [np.ones((4, 2), np.float32)])
        cf.after(lambda: after_failure.append(1))
    cf.close()
    assert after_failure == [1, 1]
    with pytest.raises(OutputWriteError, match="no space left on device writing the-output.h5"):
        out.check()
    out.abort()


def test_an_error_in_after_is_raised_by_drain(tmp_path):
    g = GuardedFile(str(tmp_path / "o.h5"))
    cf = h5flat.ChunkedFile(g, ["v"], 2, np.float32, 2)
    cf.append(0, [np.ones((2, 2), np.float32)])

    def broken():
        raise ValueError("a bug in the release")

    cf.after(broken)
    with pytest.raises(ValueError, match="a bug in the release"):
        cf.drain()
    cf.close(raise_error=False)
    g.close()


def test_parts_are_checked(tmp_path):
    g = GuardedFile(str(tmp_path / "o.h5"))
    cf = h5flat.ChunkedFile(g, ["v"], 4, np.float16, 4)
    bads = (np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float16), np.zeros((4, 8), np.float16)[:, ::2])
    good = np.ones((3, 4), np.float16)
    for bad in bads:
        with pytest.raises(TypeError, match="for a dataset of float16"):
            cf.append(0, [good, bad])   # nothing of the call is taken, not even the good part
    assert cf.rows == [0] and cf.held == [0]
    cf.close()
    g.close()


def test_a_failed_write_is_kept_and_named(tmp_path, monkeypatch):
    """A full disk while writing chunks: the failure is kept, later writes dropped, and the output's
    check raises it naming the output, before h5py ever sees the broken file."""
    out = H5Output(str(tmp_path / "o.h5"), "the-output.h5", create=False)
    cf = h5flat.ChunkedFile(out.guard, ["v"], 3, np.float32, 2)
    calls = fail_nth_write(monkeypatch, 2)
    for _ in range(3):
        cf.append(0, [np.ones((5, 3), np.float32)])
        cf.drain()
    cf.finish()   # the tail's and the structure's writes are dropped too
    assert len(calls) == 2
    with pytest.raises(OutputWriteError, match="no space left on device writing the-output.h5"):
        out.check()
    out.abort()


def test_an_unexpected_error_behind_is_raised(tmp_path, monkeypatch):
    from elmo_fast.corpus import diskio

    g = GuardedFile(str(tmp_path / "o.h5"))
    cf = h5flat.ChunkedFile(g, ["v"], 3, np.float32, 2)

    def broken(f, parts, offset):
        raise ValueError("a bug in the writer")

    monkeypatch.setattr(diskio, "write_all_at", broken)
    cf.append(0, [np.ones((4, 3), np.float32)])
    with pytest.raises(ValueError, match="a bug in the writer"):
        cf.drain()
    cf.close(raise_error=False)
    g.close()


def test_write_all_at_takes_more_buffers_than_one_pwritev(tmp_path):
    from elmo_fast.corpus import diskio

    parts = [np.full(3, i % 251, np.uint8) for i in range(2500)] + [b"", np.zeros(0, np.uint8)]
    with open(tmp_path / "w.bin", "w+b") as f:
        diskio.write_all_at(f, parts, 5)
        f.seek(5)
        assert f.read() == b"".join(bytes(p) for p in parts)


def test_merge_reads_flat_parts_of_any_writer(tmp_path):
    """Flat parts as elmo-fast writes them, as libhdf5 writes them (libver latest, rows through a
    selection), compressed, and with a chunk never written (fill value) merge into one file of our
    chunks whose every row, line, sentence and offset is the concatenation's."""
    from elmo_fast.corpus.layouts import OutputSpec
    from elmo_fast.corpus.merge import merge_files

    rng = np.random.default_rng(6)
    spec = OutputSpec(layout="flat", output_format="all", dtype_out="float16", num_layers=2, dim=5)
    chunk = 4
    rows_all, lengths_all, texts, parts, first = {n: [] for n in spec.stored}, [], [], [], 0
    for k, how in enumerate(["ours", "latest", "gzip", "hole", "ours"]):
        lengths = rng.integers(0, 6, int(rng.integers(1, 9)))
        if how == "hole":
            lengths = np.array([2 * chunk + 1])
        total = int(lengths.sum())
        data = {n: _rows(rng, total, 5, np.float16) for n in spec.stored}
        if how == "hole":
            for n in spec.stored:
                data[n][chunk:2 * chunk] = 0   # the fill value
        path = tmp_path / f"part{k}.h5"
        if how == "ours":
            g = GuardedFile(str(path))
            cf = h5flat.ChunkedFile(g, spec.stored, 5, np.float16, chunk)
            for j, n in enumerate(spec.stored):
                cf.append(j, _split(rng, data[n]))
            cf.finish()
            f = cf.open_h5()
        else:
            f = h5py.File(path, "w", libver="latest")
            for n in spec.stored:
                ds = f.create_dataset(n, (total, 5), maxshape=(None, 5), dtype=np.float16, chunks=(chunk, 5),
                                      compression="gzip" if how == "gzip" else None)
                if how == "hole":
                    ds[:chunk] = data[n][:chunk]
                    ds[2 * chunk:] = data[n][2 * chunk:]
                else:
                    ds[:] = data[n]
        for n in spec.stored:
            f[n].attrs["dtype"] = "float16"
            rows_all[n].append(data[n])
        text = [f"s{first + i}" for i in range(len(lengths))]
        f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        f.create_dataset("lines", data=np.arange(first, first + len(lengths), dtype=np.int64))
        f.create_dataset("sentences", data=text, dtype=h5py.string_dtype())
        f.attrs.update(spec.root_attrs(first, len(lengths)))
        f.attrs["total_tokens"] = total
        f.close()
        parts.append(str(path))
        lengths_all.append(lengths)
        texts += text
        first += len(lengths)
    out = tmp_path / "merged.h5"
    merge_files(parts[::-1], str(out))
    lengths = np.concatenate(lengths_all)
    with h5py.File(out, "r") as f:
        assert f.attrs["first_sentence"] == 0 and f.attrs["n_sentences"] == first
        assert f.attrs["total_tokens"] == lengths.sum()
        for n in spec.stored:
            assert f[n].chunks == (chunk, 5) and f[n].attrs["dtype"] == "float16"
            np.testing.assert_array_equal(f[n][()], np.concatenate(rows_all[n]))
        np.testing.assert_array_equal(f["offsets"][()], np.concatenate([[0], np.cumsum(lengths)]))
        np.testing.assert_array_equal(f["lines"][()], np.arange(first))
        assert [s.decode() for s in f["sentences"][()]] == texts
    structure = _structure(out)   # our chunk index: the merged layers are ChunkedFile's
    assert set(spec.stored) <= set(structure)


# ------------------------------------------------------------------------------------- room
@pytest.mark.parametrize("free", [None, 10 ** 9, 2 * 1024 + 512 - 1, 2 * 1024 + 512])
def test_a_disk_without_room_for_the_counted_rows_fails_before_they_come(tmp_path, monkeypatch, free):
    """check_room(rows) needs the chunks of those rows (7 and 5 rows in chunks of 4 rows x 32 float32:
    2 + 2 chunks of 512 bytes) after the 512 bytes before them: a file system with less free fails
    now, naming the output; with enough, or not knowing, the file is written as ever."""
    from elmo_fast.corpus import diskio

    monkeypatch.setattr(diskio, "free_bytes", lambda f: free)
    out = H5Output(str(tmp_path / "o.h5"), "the-output.h5", create=False)
    cf = h5flat.ChunkedFile(out.guard, ["a", "b"], 32, np.float32, 4)   # 512-byte chunks
    assert h5flat.DATA_START == 512
    cf.check_room([7, 5])
    if free is not None and free < 2 * 1024 + 512:
        with pytest.raises(OutputWriteError, match="no space left on device writing the-output.h5"):
            out.check()
        out.abort()
        return
    out.check()
    data = {"a": np.ones((7, 32), np.float32), "b": np.zeros((5, 32), np.float32)}
    for k, name in enumerate(["a", "b"]):
        cf.append(k, [data[name]])
    cf.finish()
    out.check()
    out.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        for name, a in data.items():
            np.testing.assert_array_equal(f[name][()], a)


def test_free_bytes_of_a_real_file_system(tmp_path):
    from elmo_fast.corpus import diskio

    with open(tmp_path / "f", "wb") as f:
        free = diskio.free_bytes(f)
        st = os.statvfs(tmp_path)
    assert free is not None and 0 < free <= st.f_blocks * st.f_frsize
