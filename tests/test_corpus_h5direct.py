"""h5direct.DatasetMaker (the allennlp layout's datasets): what readers see equals what h5py's own
create_dataset writes, on the direct-call path and on the h5py fallback; failures of its data writes
are kept like HDF5's own writes (GuardedFile)."""
from __future__ import annotations

import contextlib
import errno
import os
import sys

import h5py
import numpy as np
import pytest
from _faults import fail_nth_write

from elmo_fast.corpus import diskio, h5direct
from elmo_fast.corpus.diskio import H5Output, OutputWriteError


def _cases(rng, dtype):
    """(key, array as the writer holds it): contiguous, a strided [L, n, D] slice of a window buffer
    (one part per layer), a pooled [L, D] column, an empty sentence, a key with '/', odd shapes."""
    window = rng.standard_normal((3, 40, 7)) * (1000 if dtype == np.uint16 else 1)
    window = window.astype(dtype)
    return [("0", window[2, 3:12]),                        # --top: rows of one layer, contiguous
            ("1", window[:, 12:17]),                       # --all: three contiguous parts
            ("2", window[:, 5]),                           # pooled --all: [3, D], one row per layer
            ("3", window[0, 17:17]),                       # an empty line kept: (0, D)
            ("a/b c", window[1, 30:40]),                   # a sentence key with '/'
            ("ünï", window[2, 39:40, 6:])]


@pytest.mark.parametrize("use_lib", [True, False], ids=["direct", "h5py"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16])
def test_datasets_read_back_as_h5py_writes_them(tmp_path, use_lib, dtype):
    rng = np.random.default_rng(7)
    cases = _cases(rng, dtype)
    assert not cases[1][1].flags.c_contiguous and not cases[2][1].flags.c_contiguous
    out = tmp_path / "direct.h5"
    h5out = H5Output(str(out), str(out))
    maker = h5direct.DatasetMaker(h5out.h5, h5out.guard, dtype, use_lib=use_lib)
    if not use_lib or sys.platform.startswith("linux"):
        assert (maker.lib is not None) == use_lib
    for key, arr in cases:
        parts = (arr,) if arr.flags.c_contiguous else list(arr)
        maker.create(key.encode(), arr.shape, parts)
    h5out.close()
    ref = tmp_path / "h5py.h5"
    with h5py.File(ref, "w", libver="latest") as f:
        for key, arr in cases:
            f.create_dataset(key, data=arr)
    with h5py.File(out, "r") as got, h5py.File(ref, "r") as want:
        assert list(got.keys()) == list(want.keys())
        for key, arr in cases:
            g, w = got[key], want[key]
            assert g.shape == w.shape == arr.shape and g.dtype == w.dtype == np.dtype(dtype)
            assert g.chunks is None and g.compression is None          # contiguous, as before
            np.testing.assert_array_equal(g[...], w[...])
            np.testing.assert_array_equal(g[...], arr)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the library is found through /proc")
def test_the_direct_path_is_found_on_linux():
    """Otherwise every test above would pass on the slow fallback alone."""
    assert h5direct.libhdf5() is not None


@pytest.mark.parametrize("behind", [False, True], ids=["inline", "behind"])
def test_a_failed_data_write_is_kept_and_later_writes_dropped(tmp_path, monkeypatch, behind):
    path = tmp_path / "o.h5"
    out = H5Output(str(path), "the-output.h5")
    maker = h5direct.DatasetMaker(out.h5, out.guard, np.float32)
    maker.create(b"0", (2, 3), [np.ones((2, 3), np.float32)])
    out.check()
    calls = fail_nth_write(monkeypatch, 2)
    with maker.writes_behind() if behind else contextlib.nullcontext():
        for k in range(1, 5):   # the first succeeds, the second fails, the others are not attempted
            maker.create(str(k).encode(), (4, 3), [np.ones((4, 3), np.float32)])
    assert len(calls) == 2
    assert isinstance(out.guard.failure, OSError) and out.guard.failure.errno == errno.ENOSPC
    with pytest.raises(OutputWriteError, match="no space left on device writing the-output.h5"):
        out.check()
    out.abort()


def test_an_unexpected_error_behind_is_raised_by_the_block(tmp_path, monkeypatch):
    out = H5Output(str(tmp_path / "o.h5"), "o.h5")
    maker = h5direct.DatasetMaker(out.h5, out.guard, np.float32)

    def broken(f, parts, offset):
        raise ValueError("a bug in the writer")

    monkeypatch.setattr(diskio, "write_all_at", broken)
    with pytest.raises(ValueError, match="a bug in the writer"):
        with maker.writes_behind():
            maker.create(b"0", (2, 3), [np.ones((2, 3), np.float32)])
    out.abort()


def test_writes_behind_are_done_when_the_block_ends(tmp_path):
    """The window buffer is reused once add returns: every write must have landed by then."""
    path = tmp_path / "o.h5"
    out = H5Output(str(path), "o.h5")
    maker = h5direct.DatasetMaker(out.h5, out.guard, np.float32)
    buf = np.arange(300 * 64, dtype=np.float32).reshape(300, 64)
    want = buf.copy()
    with maker.writes_behind():
        for k in range(100):
            maker.create(str(k).encode(), (3, 64), [buf[3 * k:3 * k + 3]])
    buf[:] = -1   # what the next window would do to the buffer
    out.close()
    with h5py.File(path, "r") as f:
        for k in range(100):
            np.testing.assert_array_equal(f[str(k)][...], want[3 * k:3 * k + 3])


@pytest.mark.parametrize("most", [None, 3, 1], ids=["whole", "short-3", "short-1"])
def test_write_at_writes_the_parts_in_order(tmp_path, monkeypatch, most):
    """Also when the kernel takes fewer bytes than asked (a short write): the rest follows."""
    real = os.pwritev

    def short(fd, views, offset):
        return real(fd, [bytes(b"".join(bytes(v) for v in views)[:most])], offset)

    if most:
        monkeypatch.setattr(diskio.os, "pwritev", short)
    path = tmp_path / "raw.bin"
    g = diskio.GuardedFile(str(path))
    g.write(b"x" * 12)
    g.flush()   # (buffered bytes are HDF5's metadata: never where write_at writes)
    g.write_at(2, [b"ab", memoryview(b"cde"), b"", np.frombuffer(b"fgh", np.uint8)])
    g.close()
    assert path.read_bytes() == b"xxabcdefghxx"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the library is found through /proc")
def test_a_failed_create_raises_naming_the_dataset(tmp_path):
    out = H5Output(str(tmp_path / "o.h5"), "o.h5")
    maker = h5direct.DatasetMaker(out.h5, out.guard, np.float32)
    maker.create(b"7", (1, 2), [np.ones((1, 2), np.float32)])
    with pytest.raises(RuntimeError, match="could not create the dataset '7'"):
        maker.create(b"7", (1, 2), [np.ones((1, 2), np.float32)])
    out.abort()
