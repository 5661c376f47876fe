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
    pk.create(b"7", (1, 2), [np.ones((1, 2), np.float32)])
    with pytest.raises(ValueError, match="'7' is used twice"):
        pk.create(b"7", (1, 2), [np.ones((1, 2), np.float32)])
    for bad in (b"a/b", b"", b"a\0b"):
        with pytest.raises(ValueError, match="cannot store a dataset named"):
            pk.create(bad, (1, 2), [np.ones((1, 2), np.float32)])
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
    real, calls = diskio.write_all_at, []

    def full(f, parts, offset):
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, parts, offset)

    monkeypatch.setattr(diskio, "write_all_at", full)
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
