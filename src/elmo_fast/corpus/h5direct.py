"""Many small contiguous hdf5 datasets, made fast: the allennlp layout's one dataset per sentence.

Through h5py's API each dataset costs ~100 us of Python object work (an ObjectID per dataset and
dataspace, the id registry, property-list checks) around ~40 us of HDF5, and its H5Dwrite goes
through HDF5's selection machinery into the fileobj driver's Python callbacks. Here:

* the dataset is created by a direct call (ctypes) into the libhdf5 that h5py loaded, with h5py's
  lock held (h5py's rule: one HDF5 call at a time) and the GIL released, so the model stage and the
  feeder run during HDF5's metadata work;
* its storage is allocated at creation (contiguous, `H5D_ALLOC_TIME_EARLY`, fill never), so its
  file address is known, and its bytes are written there by `GuardedFile.write_at` (pwritev, same
  failure handling as HDF5's own writes), without passing through HDF5; inside
  `with maker.writes_behind():` those writes run in a thread of their own (one per maker, until
  `close`), beside the next creations (both without the GIL), and are all done when the block ends
  (or, with `wait=False`, by `close`).

Readers see the same datasets: contiguous, same shape, dtype and values; only the creation
properties recorded with each dataset (allocation time, fill time) differ from h5py's defaults.
Where the library cannot be found or is not the one h5py uses, the same datasets are made through
h5py's low-level API (slower, same file).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from h5py._objects import phil  # h5py's lock: one HDF5 call at a time

_HADDR_UNDEF = (1 << 64) - 1
_lib_lock = threading.Lock()
_lib_cache: list = []


def _loaded_libhdf5() -> Optional[str]:
    """Path of the libhdf5 mapped into this process (h5py's), Linux only; None elsewhere."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) < 6:
                    continue
                path = fields[5].strip()
                name = os.path.basename(path)
                if name.startswith("libhdf5") and not name.startswith("libhdf5_"):
                    return path
    except OSError:
        pass
    return None


def libhdf5():
    """ctypes handle on the libhdf5 instance h5py uses, or None (checked: it sees h5py's objects)."""
    with _lib_lock:
        if not _lib_cache:
            _lib_cache.append(_open_lib())
        return _lib_cache[0]


def _open_lib():
    import h5py

    path = _loaded_libhdf5()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # the already loaded instance (dlopen of a loaded path returns it)
        hid = ctypes.c_int64
        lib.H5Dcreate2.restype, lib.H5Dcreate2.argtypes = hid, [hid, ctypes.c_char_p, hid, hid, hid, hid, hid]
        lib.H5Dget_offset.restype, lib.H5Dget_offset.argtypes = ctypes.c_uint64, [hid]
        lib.H5Dclose.restype, lib.H5Dclose.argtypes = ctypes.c_int, [hid]
        lib.H5Sget_simple_extent_dims.restype = ctypes.c_int
        lib.H5Sget_simple_extent_dims.argtypes = [hid, ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    # the same instance as h5py's: a dataspace made by h5py is known to it, with its shape
    probe = h5py.h5s.create_simple((7919, 17))
    dims = (ctypes.c_uint64 * 2)()
    if lib.H5Sget_simple_extent_dims(probe.id, dims, None) != 2 or tuple(dims) != (7919, 17):
        return None
    return lib


class DatasetMaker:
    """Creates contiguous datasets in an open h5py file and writes their bytes (see the module doc).

    h5: an h5py.File written through `guard` (a diskio.GuardedFile); dtype: the stored numpy dtype."""

    def __init__(self, h5, guard, dtype, use_lib: bool = True):
        import h5py

        self.h5, self.guard = h5, guard
        self.lib = libhdf5() if use_lib else None
        self._tid = h5py.h5t.py_create(np.dtype(dtype))
        self._lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
        self._lcpl.set_create_intermediate_group(True)   # sentence keys may hold '/'
        self._lcpl.set_char_encoding(h5py.h5t.CSET_UTF8)
        self._dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        self._dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)   # the address is known at creation
        self._dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)     # every byte is written by us
        self._spaces: Dict[Tuple[int, ...], object] = {}       # one dataspace per shape, reused
        self._behind: Optional[_WritesBehind] = None

    @contextlib.contextmanager
    def writes_behind(self, wait: bool = True):
        """Data writes of the datasets created in the block run in a thread (one per maker, kept
        until `close`). wait: all done at the block's end, so the arrays given to `create` may be
        reused after it; otherwise they may still be in flight (at most _WritesBehind.LIMIT; the
        arrays must then not be reused, as a model's fresh output is not)."""
        if self._behind is None:
            self._behind = _WritesBehind(self.guard)
        try:
            yield self
        except BaseException:
            self.close(raise_error=False)
            raise
        if wait:
            self._behind.drain()

    def close(self, raise_error: bool = True) -> None:
        """Waits for the writes in flight and stops their thread (raising its unexpected error)."""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.close(raise_error)

    def _space(self, shape: Tuple[int, ...]):
        import h5py

        sp = self._spaces.get(shape)
        if sp is None:
            sp = self._spaces[shape] = h5py.h5s.create_simple(shape)
        return sp

    def create(self, key: bytes, shape: Tuple[int, ...], parts: Sequence[np.ndarray]) -> None:
        """A dataset `key` of `shape` whose C-order bytes are those of `parts` one after the other
        (each C-contiguous, in the stored dtype)."""
        space = self._space(shape)
        if self.lib is None:
            import h5py

            with phil:
                ds = h5py.h5d.create(self.h5.id, key, self._tid, space, dcpl=self._dcpl, lcpl=self._lcpl)
                addr = ds.get_offset()
            addr = _HADDR_UNDEF if addr is None else addr
        else:
            lib, f, t, lcpl, dcpl = self.lib, self.h5.id.id, self._tid.id, self._lcpl.id, self._dcpl.id
            with phil:
                d = lib.H5Dcreate2(f, key, t, space.id, lcpl, dcpl, 0)
                if d < 0:
                    name = key.decode("utf-8", "replace")
                    raise RuntimeError(f"hdf5 could not create the dataset {name!r} in {self.guard.path}")
                addr = lib.H5Dget_offset(d)
                lib.H5Dclose(d)
        if addr == _HADDR_UNDEF:   # an empty dataset has no storage
            return
        if self._behind is not None:
            self._behind.put(addr, parts)
        else:
            self.guard.write_at(addr, parts)


class _WritesBehind:
    """One thread writing (address, parts) in order; an unexpected error is raised by drain / close.
    At most `limit` writes wait at a time: each keeps the arrays it reads from alive. `after(fn)`
    has the thread call fn once every write handed over before it is done (or dropped after a
    failure): how a caller learns that it may reuse the arrays without waiting for them."""

    LIMIT = 256

    def __init__(self, guard, limit: int = LIMIT):
        self.guard = guard
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.room = threading.Semaphore(limit)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="elmo-h5-data", daemon=True)
        self.thread.start()

    def put(self, addr: int, parts) -> None:
        self.room.acquire()   # the thread frees room after every write, failed or not
        self.q.put((addr, parts))

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, threading.Event):   # drain: everything before it is written
                item.set()
                continue
            if callable(item):   # after(): called whatever the writes before it met
                try:
                    item()
                except BaseException as e:  # noqa: BLE001 - raised in the creating thread by drain / close
                    self.error = self.error or e
                continue
            try:
                if self.error is None:
                    self.guard.write_at(*item)   # OSError: kept in the guard, later writes dropped
            except BaseException as e:  # noqa: BLE001 - raised in the creating thread by drain / close
                self.error = e
            finally:
                self.room.release()

    def after(self, fn) -> None:
        self.q.put(fn)

    def drain(self, raise_error: bool = True) -> None:
        done = threading.Event()
        self.q.put(done)
        done.wait()
        if raise_error and self.error is not None:
            raise self.error

    def close(self, raise_error: bool = True) -> None:
        self.q.put(None)
        self.thread.join()
        if raise_error and self.error is not None:
            raise self.error
