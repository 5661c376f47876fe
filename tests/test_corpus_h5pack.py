"""h5pack.PackedFile (the allennlp layout's file, its structure written without libhdf5): libhdf5 reads
what it writes as its own files (same object header messages, byte for byte, as libhdf5 writes for
the same dataset), at every B-tree depth, and can extend it; its data writes fail like HDF5's own."""
from __future__ import annotations

import errno
import json
import os
import struct

import h5py
import numpy as np
import pytest
from _faults import fail_nth_write

from elmo_fast.corpus import diskio, h5pack
from elmo_fast.corpus.diskio import GuardedFile, H5Output, OutputWriteError

DTYPES = [np.float32, np.float16, np.uint16]


def _messages(raw: bytes, addr: int):
    """The (type, flags, body) messages of the version-1 object header at addr, NIL ones left out."""
    version, _, count, refs, size = struct.unpack_from("<BBHII", raw, addr)
    assert version == 1 and refs == 1
    pos, end, out = addr + 16, addr + 16 + size, []
    for _ in range(count):
        kind, n, flags = struct.unpack_from("<HHB", raw, pos)
        if kind != 0:
            out.append((kind, flags, raw[pos + 8:pos + 8 + n]))
        pos += 8 + n
    assert pos == end
    return out


def _header_addr(f: h5py.File, name: str) -> int:
    return h5py.h5g.get_objinfo(f.id, name.encode()).objno[0]


def _packed(path, items, dtype, behind=True, limit=8):
    """A finished packed file at path holding items [(name, array)]; returns the PackedFile."""
    g = GuardedFile(str(path))
    pk = h5pack.PackedFile(g, dtype, limit=limit)
    ctx = pk.writes_behind() if behind else _nothing()
    with ctx:
        for name, a in items:
            parts = (a,) if a.flags.c_contiguous else [np.ascontiguousarray(x) for x in a]
            pk.create(name.encode(), a.shape, parts)
    pk.finish()
    g.close()
    return pk


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 9), (11,), (0, 4), (3, 0, 4)], ids=str)
def test_object_headers_are_the_ones_libhdf5_writes(tmp_path, dtype, shape):
    """Same messages (dataspace, datatype, fill value, layout), flags and bytes as libhdf5's own
    header for a contiguous dataset allocated early and never filled; only the data address differs."""
    a = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    _packed(tmp_path / "p.h5", [("0", a)], dtype)
    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w", libver="earliest") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        dcpl.set_obj_track_times(False)
        d = h5py.h5d.create(f.id, b"0", h5py.h5t.py_create(np.dtype(dtype)), h5py.h5s.create_simple(shape),
                            dcpl=dcpl)
        if a.size:
            d.write(h5py.h5s.ALL, h5py.h5s.ALL, a)
    got_raw, want_raw = (tmp_path / "p.h5").read_bytes(), ref.read_bytes()
    with h5py.File(tmp_path / "p.h5", "r") as f, h5py.File(ref, "r") as r:
        got, want = _messages(got_raw, _header_addr(f, "0")), _messages(want_raw, _header_addr(r, "0"))
        np.testing.assert_array_equal(f["0"][...], a)
        assert f["0"].id.get_offset() == (h5pack.DATA_START if a.size else None)
    assert [m[:2] for m in got] == [m[:2] for m in want] == [(1, 0), (3, 1), (5, 1), (8, int(a.size > 0))]
    for (kind, _, g), (_, _, w) in zip(got, want):
        if kind == 8:   # layout v3 contiguous: version, class, [address], size
            g, w = g[:2] + g[10:], w[:2] + w[10:]
        assert g == w, kind


@pytest.mark.parametrize("n", [0, 1, 8, 9, 255, 257, 8 * 32 * 32 + 3])
def test_every_dataset_reads_back_at_every_tree_depth(tmp_path, n):
    """8 names per symbol table node, 32 nodes per B-tree node: 8193+ names need three levels."""
    rng = np.random.default_rng(n)
    items = [(str(i), rng.standard_normal((int(rng.integers(0, 4)), 3)).astype(np.float32)) for i in range(n)]
    path = tmp_path / "p.h5"
    pk = _packed(path, items, np.float32)
    raw = path.read_bytes()
    assert len(raw) == pk.eof                          # the superblock's end of file is the file's
    # the data region is every array's bytes in the order added, nothing between them
    data = b"".join(a.tobytes() for _, a in items)
    assert raw[h5pack.DATA_START:h5pack.DATA_START + len(data)] == data
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == sorted(name for name, _ in items)   # libhdf5 lists by byte order
        for name, a in items:
            d = f[name]
            assert d.shape == a.shape and d.dtype == np.float32 and d.chunks is None
            np.testing.assert_array_equal(d[...], a)
        assert h5py.h5g.get_objinfo(f.id, b".").objno[0] == h5pack.ROOT_OH


def test_libhdf5_extends_the_file(tmp_path):
    """Attributes and new datasets go in through h5py, splitting the full nodes of the tree."""
    rng = np.random.default_rng(3)
    items = [(f"s{i}", rng.standard_normal((2, 5)).astype(np.float16)) for i in range(300)]
    path = tmp_path / "p.h5"
    g = GuardedFile(str(path))
    pk = h5pack.PackedFile(g, np.float16)
    with pk.writes_behind():
        for name, a in items:
            pk.create(name.encode(), a.shape, [a])
    pk.finish()
    with pk.open_h5() as f:
        f.attrs["options"] = json.dumps({"x": "y" * 5000})
        f.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))[0] = '{"a": "1"}'
        for i in range(300):
            f[f"t{i}"] = np.full((1, 5), i, np.float16)
    g.close()
    with h5py.File(path, "r") as f:
        assert len(f) == 601 and f.attrs["options"] == json.dumps({"x": "y" * 5000})
        assert f["sentence_to_index"][0] == b'{"a": "1"}'
        for name, a in items:
            np.testing.assert_array_equal(f[name][...], a)
        for i in range(300):
            assert f[f"t{i}"][0, 0] == i


@pytest.mark.parametrize("behind", [False, True], ids=["inline", "behind"])
def test_strided_parts_and_unicode_names(tmp_path, behind):
    """--all sentences are [3, n, D] slices of a window (one part per layer); names are UTF-8."""
    window = np.random.default_rng(5).standard_normal((3, 40, 6)).astype(np.float32)
    items = [("ünï", window[:, 3:9]), ("b c", window[:, 9:10]), ("a", window[2, 10:20]), ("0", window[:, 20])]
    path = tmp_path / "p.h5"
    _packed(path, items, np.float32, behind=behind)
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == sorted(n for n, _ in items)   # byte order: UTF-8 after ASCII
        for name, a in items:
            np.testing.assert_array_equal(f[name][...], a)


def test_names_are_checked(tmp_path):
    pk = h5pack.PackedFile(GuardedFile(str(tmp_path / "p.h5")), np.float32)
    for bad in (b"a/b", b"", b"a\0b"):
        with pytest.raises(ValueError, match="cannot store a dataset named"):
            pk.create(bad, (1, 2), [np.ones((1, 2), np.float32)])
    for name in (b"7", b"8", b"70", b"7"):
        pk.create(name, (1, 2), [np.ones((1, 2), np.float32)])
    with pytest.raises(ValueError, match="'7' is used twice"):   # found when the names are sorted
        pk.finish()
    pk.guard.close()


def test_writes_behind_are_done_when_the_block_ends(tmp_path):
    """The window buffer is reused once add returns: every write must have landed by then; and a
    run of datasets longer than one pwritev takes is split."""
    buf = np.arange(3000 * 4, dtype=np.float32).reshape(3000, 4)
    want = buf.copy()
    path = tmp_path / "p.h5"
    g = GuardedFile(str(path))
    pk = h5pack.PackedFile(g, np.float32, limit=2)
    with pk.writes_behind():
        for k in range(1000):   # 1000 parts: more than one pwritev's worth
            pk.create(str(k).encode(), (3, 4), [buf[3 * k:3 * k + 3]])
    buf[:] = -1
    pk.finish()
    g.close()
    with h5py.File(path, "r") as f:
        for k in range(1000):
            np.testing.assert_array_equal(f[str(k)][...], want[3 * k:3 * k + 3])


@pytest.mark.parametrize("behind", [False, True], ids=["inline", "behind"])
def test_a_failed_data_write_is_kept_and_named(tmp_path, monkeypatch, behind):
    """A full disk while writing the data: the failure is kept, later writes dropped, and finishing
    raises it naming the output, before h5py ever sees the broken file."""
    path = tmp_path / "o.h5"
    out = H5Output(str(path), "the-output.h5", create=False)
    pk = h5pack.PackedFile(out.guard, np.float32)
    calls = fail_nth_write(monkeypatch, 2)
    for k in range(3):
        with pk.writes_behind() if behind else _nothing():
            pk.create(str(k).encode(), (4, 3), [np.ones((4, 3), np.float32)])
    pk.finish()   # its structure writes are dropped too
    assert len(calls) == 2
    with pytest.raises(OutputWriteError, match="no space left on device writing the-output.h5"):
        out.check()
    out.abort()
    assert out.h5 is None


def test_an_unexpected_error_behind_is_raised_by_the_block(tmp_path, monkeypatch):
    g = GuardedFile(str(tmp_path / "o.h5"))
    pk = h5pack.PackedFile(g, np.float32)

    def broken(f, parts, offset):
        raise ValueError("a bug in the writer")

    monkeypatch.setattr(diskio, "write_all_at", broken)
    with pytest.raises(ValueError, match="a bug in the writer"):
        with pk.writes_behind():
            pk.create(b"0", (2, 3), [np.ones((2, 3), np.float32)])
    g.close()


# ------------------------------------------------------------------------------------ reading back
def _h5py_file(path, items, libver, **kw):
    with h5py.File(path, "w", libver=libver) as f:
        for name, a in items:
            f.create_dataset(name, data=a, **kw)
        return path


@pytest.mark.parametrize("source", ["packed", "libhdf5-earliest"])
def test_list_datasets_reads_what_h5py_sees(tmp_path, source):
    """Names (in order), shapes, datatypes, data addresses and sizes; for libhdf5's own files too,
    with attributes pushing some object headers into continuation blocks."""
    rng = np.random.default_rng(11)
    items = [(str(i), rng.standard_normal((int(rng.integers(0, 4)), 5)).astype(np.float16))
             for i in range(300)]
    path = tmp_path / "f.h5"
    if source == "packed":
        _packed(path, items, np.float16)
    else:
        _h5py_file(path, items, "earliest")
        with h5py.File(path, "r+") as f:
            for i in range(0, 300, 7):
                f[str(i)].attrs["note"] = "x" * 2000    # no room in the header: a continuation block
    stored = h5pack.list_datasets(str(path))
    want_msg = h5pack.PackedFile(GuardedFile(str(tmp_path / "unused.h5")), np.float16).dtype_message
    with h5py.File(path, "r") as f:
        assert [s.name.decode() for s in stored] == list(f.keys())
        for s in stored:
            d = f[s.name.decode()]
            assert s.shape == d.shape and s.nbytes == d.size * 2 and s.dtype_message == want_msg
            assert s.addr == (d.id.get_offset() if d.size else s.addr)
            if d.size:
                raw = path.read_bytes()[s.addr:s.addr + s.nbytes]
                np.testing.assert_array_equal(np.frombuffer(raw, np.float16).reshape(s.shape), d[...])


def test_list_datasets_gives_none_for_what_it_does_not_read(tmp_path):
    a = np.ones((3, 4), np.float32)
    cases = {"latest": _h5py_file(tmp_path / "latest.h5", [("0", a)], "latest"),
             "chunked": _h5py_file(tmp_path / "chunked.h5", [("0", a)], "earliest", chunks=(1, 4)),
             "compressed": _h5py_file(tmp_path / "gz.h5", [("0", a)], "earliest", compression="gzip")}
    with h5py.File(tmp_path / "group.h5", "w", libver="earliest") as f:
        f["g/0"] = a
    cases["group"] = tmp_path / "group.h5"
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "text.h5").write_bytes(b"not an hdf5 file at all\n" * 10)
    cases["empty"], cases["text"] = tmp_path / "empty.h5", tmp_path / "text.h5"
    for what, path in cases.items():
        assert h5pack.list_datasets(str(path)) is None, what
    assert h5pack.list_datasets(str(_h5py_file(tmp_path / "ok.h5", [("0", a)], "earliest"))) is not None


def test_create_from_copies_runs_at_once(tmp_path, monkeypatch):
    """Datasets whose bytes follow each other in the source are one kernel copy; the copies land
    at the right places, among datasets written from memory."""
    rng = np.random.default_rng(2)
    src_items = [(f"s{i}", rng.standard_normal((i + 1, 3)).astype(np.float32)) for i in range(6)]
    src = tmp_path / "src.h5"
    _packed(src, src_items, np.float32)
    stored = {s.name: s for s in h5pack.list_datasets(str(src))}
    calls = []
    real = diskio.copy_range
    monkeypatch.setattr(diskio, "copy_range", lambda *a: (calls.append(a[1:]), real(*a)))
    path = tmp_path / "dst.h5"
    g = GuardedFile(str(path))
    pk = h5pack.PackedFile(g, np.float32)
    mem = np.full((2, 3), 7, np.float32)
    with open(src, "rb") as fh:
        fd = fh.fileno()
        for name in (b"s0", b"s1", b"s2"):            # adjacent in the source: one copy
            pk.create_from(name, stored[name].shape, fd, stored[name].addr)
        pk.create(b"m", mem.shape, [mem])             # from memory: ends the run
        for name in (b"s5", b"s3"):                   # not adjacent: two copies
            pk.create_from(name, stored[name].shape, fd, stored[name].addr)
        pk.finish()
    g.close()
    assert [c[2] for c in calls] == [4 * 3 * (1 + 2 + 3), 4 * 3 * 6, 4 * 3 * 4]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["m"][...], mem)
        for name, a in src_items:
            if name != "s4":
                np.testing.assert_array_equal(f[name][...], a)
        assert "s4" not in f


@pytest.mark.parametrize("how", ["copy_file_range", "read-write"])
def test_copy_range_and_a_short_source(tmp_path, monkeypatch, how):
    if how == "read-write":
        def unsupported(*a):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        monkeypatch.setattr(diskio.os, "copy_file_range", unsupported, raising=False)
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    g = GuardedFile(str(tmp_path / "dst.bin"))
    with open(src, "rb") as fh:
        g.copy_at(10, fh.fileno(), 300, 5000)
        assert g.failure is None
        g.copy_at(9000, fh.fileno(), 25_000, 1000)   # the source ends 400 bytes in
    g.close()
    got = (tmp_path / "dst.bin").read_bytes()
    assert got[10:5010] == src.read_bytes()[300:5300]
    assert isinstance(g.failure, OSError) and g.failure.errno == errno.EIO


def test_a_full_disk_while_copying_is_kept(tmp_path, monkeypatch):
    """ENOSPC from the kernel's copy is the output's failure (no fallback to read and write)."""
    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diskio.os, "copy_file_range", full, raising=False)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100)
    g = GuardedFile(str(tmp_path / "dst.bin"))
    with open(src, "rb") as fh:
        g.copy_at(0, fh.fileno(), 0, 100)
    with pytest.raises(OutputWriteError, match="no space left on device writing out.h5"):
        g.check("out.h5")
    g.close()


def test_merge_reads_parts_of_any_allennlp_writer(tmp_path):
    """Parts written as elmo-fast writes them, by the libhdf5 path (libver latest) and by h5py with
    libver earliest merge into one packed file with every dataset, the index and the range."""
    from elmo_fast.corpus.layouts import OutputSpec, write_index
    from elmo_fast.corpus.merge import merge_files

    rng = np.random.default_rng(4)
    spec = OutputSpec(layout="allennlp", output_format="top", dtype_out="float16", dim=5)
    every, parts, index = {}, [], {}
    for k, (first, n, how) in enumerate([(0, 40, "packed"), (40, 30, "latest"), (70, 25, "earliest")]):
        items = [(str(i), rng.standard_normal((int(rng.integers(0, 4)), 5)).astype(np.float16))
                 for i in range(first, first + n)]
        every.update(items)
        part_index = {f"sentence {i}": str(i) for i in range(first, first + n)}
        index.update(part_index)
        path = tmp_path / f"part{k}.h5"
        if how == "packed":
            g = GuardedFile(str(path))
            pk = h5pack.PackedFile(g, np.float16)
            for name, a in items:
                pk.create(name.encode(), a.shape, [a])
            pk.finish()
            f = pk.open_h5()
        else:
            f = h5py.File(_h5py_file(path, items, how), "r+")
        write_index(f, part_index)
        f.attrs.update(spec.root_attrs(first, n))
        f.close()
        parts.append(str(path))
    out = tmp_path / "merged.h5"
    merge_files(parts[::-1], str(out))
    assert h5pack.list_datasets(str(out)) is not None       # the merged file is packed too
    with h5py.File(out, "r") as f:
        assert sorted(k for k in f.keys() if k != "sentence_to_index") == sorted(every)
        for name, a in every.items():
            np.testing.assert_array_equal(f[name][...], a)
        assert json.loads(f["sentence_to_index"][0]) == index
        assert f.attrs["first_sentence"] == 0 and f.attrs["n_sentences"] == 95
