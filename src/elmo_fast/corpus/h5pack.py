"""Many contiguous datasets in one hdf5 file, written without libhdf5: the allennlp layout at disk speed.

libhdf5 makes a dataset in 50-90 us (metadata cache, B-tree insert, object header), which caps the
allennlp layout (one dataset per sentence) near 12 k sentences/s whatever the disk can take. Here a
dataset's bytes are appended to the file as they come (one sequential stream, written in a thread of
its own, a batch of datasets per pwritev), and the file's structure is written once at the end, in
the format h5py writes by default (libver "earliest", as in allennlp's own files):

  [superblock v0 | root group object header | data of every dataset, in the order given |
   dataset object headers | local heap (the names) | symbol table nodes | B-tree nodes]

The root group is an old-style symbol table: a version-1 B-tree (K = 16) whose leaves are symbol
table nodes (8 entries, names sorted by byte value, as libhdf5 keeps them); every key is a name's
offset in the local heap, key 0 the empty name, key i + 1 the last name under child i. A dataset's
object header (version 1) holds the messages libhdf5 writes for a contiguous dataset allocated early
and never filled: dataspace (v1, max dims = dims), datatype (as libhdf5 encodes it, H5Tencode),
fill value (v2) and layout (v3, contiguous: address, size). Then `PackedFile.open_h5()` hands the
file to h5py ("r+") for the rest (attributes, the sentence_to_index dataset): libhdf5 itself extends
the structure, which is one more check that it reads it as it would its own.

Names: any bytes but b"/" and NUL, each used once (checked). Format: HDF5 File Format Specification
3.0, sections II.A (superblock), III.A.1 (v1 B-trees), III.B-D (symbol table nodes and entries, local
heaps), IV.A (object headers and messages).
"""
from __future__ import annotations

import contextlib
import struct
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .h5direct import _WritesBehind

UNDEF = (1 << 64) - 1
SIGNATURE = b"\x89HDF\r\n\x1a\n"
LEAF_K, TREE_K = 4, 16               # libhdf5's defaults: 8 entries per symbol table node, 32 children
ROOT_OH = 96                         # the root group's object header, right after the superblock
DATA_START = 512                     # the first dataset's bytes
_FREE_NULL = 1                       # libhdf5's "no free block" in a local heap header
_IOV = 512                           # buffers per pwritev (IOV_MAX is 1024 on Linux)

_ENTRY = np.dtype([("name", "<u8"), ("header", "<u8"), ("cache", "<u4"), ("reserved", "<u4"),
                   ("scratch", "<u8", (2,))])                                  # 40 bytes
_SNOD = np.dtype([("sig", "S4"), ("version", "u1"), ("reserved", "u1"), ("n", "<u2"),
                  ("entries", _ENTRY, (2 * LEAF_K,))])                         # 328 bytes
_TREE = np.dtype([("sig", "S4"), ("type", "u1"), ("level", "u1"), ("n", "<u2"), ("left", "<u8"),
                  ("right", "<u8"), ("kc", "<u8", (4 * TREE_K + 1,))])         # key0 child0 key1 ... key32


def _pad8(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 8)


def _message(kind: int, flags: int, body: bytes) -> bytes:
    body = _pad8(body)
    return struct.pack("<HHB3x", kind, len(body), flags) + body


def _header_dtype(rank: int, middle: int) -> np.dtype:
    """A dataset's object header with `rank` dims; `middle`: bytes of the constant messages."""
    return np.dtype([("prefix", "<u4", (4,)),
                     ("space_msg", "<u8"), ("space", "<u8"), ("dims", "<u8", (rank,)),
                     ("maxdims", "<u8", (rank,)), ("middle", f"V{middle}"),
                     ("layout_msg", "<u8"), ("layout", "<u2"), ("addr", "<u8"), ("size", "<u8"),
                     ("pad", "V6")])


class PackedFile:
    """Writes datasets into a new hdf5 file through `guard` (a diskio.GuardedFile, empty).

    dtype: the stored numpy dtype of every dataset. `create` appends one; `finish` writes the structure;
    `open_h5` then gives an h5py.File ("r+") on it."""

    def __init__(self, guard, dtype, limit: int = 8):
        import h5py

        self.guard = guard
        self.dtype = np.dtype(dtype)
        self.names: List[bytes] = []
        self.shapes: List[Tuple[int, ...]] = []
        self.addrs: List[int] = []
        self.end = DATA_START
        self.limit = limit
        self._seen = set()
        self._run: list = []            # buffers of the datasets not yet handed to the writes
        self._run_at = DATA_START
        self._deferring = False         # inside writes_behind
        self._behind: Optional[_WritesBehind] = None
        tid = h5py.h5t.py_create(self.dtype)
        # datatype (constant) as libhdf5 encodes it; fill value v2: allocated early, never filled, default
        self._middle = _message(3, 1, tid.encode()[2:]) + _message(5, 1, bytes([2, 1, 1, 1, 0, 0, 0, 0]))

    # ------------------------------------------------------------------------------------ data
    @contextlib.contextmanager
    def writes_behind(self, wait: bool = True):
        """Like h5direct.DatasetMaker.writes_behind: the data of the datasets added in the block are
        written by a thread (at most `limit` runs of datasets in flight); wait: all written at the end."""
        if self._behind is None:
            self._behind = _WritesBehind(self.guard, self.limit)
        self._deferring = True
        try:
            yield self
            self._hand_over()
        except BaseException:
            self.close(raise_error=False)
            raise
        finally:
            self._deferring = False
        if wait:
            self._behind.drain()

    def create(self, name: bytes, shape: Tuple[int, ...], parts: Sequence[np.ndarray]) -> None:
        """Dataset `name` of `shape` whose C-order bytes are those of `parts` (C-contiguous, in the
        stored dtype) one after the other. Inside `writes_behind` the parts must not change until
        written (see there); outside, they are written before add returns."""
        if b"/" in name or b"\0" in name or not name:
            raise ValueError(f"cannot store a dataset named {name!r} in a packed file")
        if name in self._seen:
            raise ValueError(f"the dataset name {name.decode('utf-8', 'replace')!r} is used twice")
        self._seen.add(name)
        shape = tuple(map(int, shape))
        nbytes = self.dtype.itemsize
        for s in shape:
            nbytes *= s
        self.names.append(name)
        self.shapes.append(shape)
        self.addrs.append(self.end if nbytes else UNDEF)
        if not nbytes:
            return
        self._run.extend(parts)
        self.end += nbytes
        if not self._deferring or len(self._run) >= _IOV:
            self._hand_over()

    def _hand_over(self) -> None:
        run, at = self._run, self._run_at
        self._run, self._run_at = [], self.end
        if not run:
            return
        if self._deferring:
            self._behind.put(at, run)
        else:
            self.guard.write_at(at, run)

    def close(self, raise_error: bool = True) -> None:
        """Waits for the writes in flight and stops their thread."""
        self._hand_over()
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.close(raise_error)

    # ------------------------------------------------------------------------------- structure
    def finish(self) -> None:
        """Writes every dataset's header, the names, the B-tree and the superblock."""
        self.close()
        n = len(self.names)
        order = sorted(range(n), key=self.names.__getitem__)
        at = self.end + (-self.end % 8)
        headers, header_addrs = self._headers(at)
        at += len(headers)
        heap_addr = at
        heap, name_offsets = self._heap(order, heap_addr + 32)
        at += len(heap)
        snods, snod_addrs, last_names = self._snods(order, header_addrs, name_offsets, at)
        at += len(snods)
        tree, tree_addr = self._tree(snod_addrs, last_names, at)
        eof = at + len(tree)
        self.guard.write_at(self.end, [b"\0" * (-self.end % 8), headers, heap, snods, tree])
        top = [self._superblock(eof, tree_addr, heap_addr), self._root(tree_addr, heap_addr)]
        self.guard.write_at(0, top)
        self.eof = eof

    def _headers(self, at: int) -> Tuple[bytes, np.ndarray]:
        """Object headers of all datasets, in the order added, from address `at`; their addresses."""
        n = len(self.names)
        addrs = np.empty(n, np.uint64)
        if not n:
            return b"", addrs
        ranks = np.fromiter((len(s) for s in self.shapes), np.int64, n)
        blob = []
        pos = at
        # one rank per job in practice; grouped so each group is one structured array
        for rank in np.unique(ranks).tolist():
            idx = np.flatnonzero(ranks == rank)
            dt = _header_dtype(rank, len(self._middle))
            h = np.zeros(len(idx), dt)
            space_body = 8 + 16 * rank
            h["prefix"] = (1 | (4 << 16), 1, dt.itemsize - 16, 0)   # version 1, 4 messages; refcount; size
            h["space_msg"] = 1 | (space_body << 16)
            h["space"] = 1 | (rank << 8) | (1 << 16)                  # version 1, rank, max dims present
            dims = np.array([self.shapes[i] for i in idx.tolist()], np.uint64).reshape(len(idx), rank)
            h["dims"], h["maxdims"] = dims, dims
            h["middle"] = np.frombuffer(self._middle, f"V{len(self._middle)}")[0]
            size = np.prod(dims, axis=1, dtype=np.uint64) * np.uint64(self.dtype.itemsize)
            # layout, 24 bytes; marked constant once storage is allocated (libhdf5 leaves empty ones not)
            h["layout_msg"] = np.uint64(8 | (24 << 16)) | ((size > 0).astype(np.uint64) << np.uint64(32))
            h["layout"] = 3 | (1 << 8)                                # version 3, contiguous
            h["addr"] = np.array(self.addrs, np.uint64)[idx]
            h["size"] = size
            addrs[idx] = pos + dt.itemsize * np.arange(len(idx), dtype=np.uint64)
            pos += h.nbytes
            blob.append(h.tobytes())
        return b"".join(blob), addrs

    def _heap(self, order: List[int], data_addr: int) -> Tuple[bytes, np.ndarray]:
        """The local heap (32-byte header, then the data segment: b"" then every name, NUL-ended,
        each padded to 8) and each dataset's name offset."""
        offsets = np.empty(len(self.names), np.uint64)
        parts, pos = [b"\0" * 8], 8
        for i in order:
            b = _pad8(self.names[i] + b"\0")
            offsets[i] = pos
            parts.append(b)
            pos += len(b)
        data = b"".join(parts)
        head = struct.pack("<4sB3xQQQ", b"HEAP", 0, len(data), _FREE_NULL, data_addr)
        return head + data, offsets

    def _snods(self, order, header_addrs, name_offsets, at: int):
        """Symbol table nodes holding the sorted entries, 8 a node; their addresses and each node's
        last name offset (the B-tree's keys)."""
        n = len(order)
        k = 2 * LEAF_K
        count = -(-n // k)
        s = np.zeros(count, _SNOD)
        s["sig"], s["version"] = b"SNOD", 1
        s["n"] = k
        if count:
            s["n"][-1] = n - k * (count - 1)
        o = np.array(order, np.int64)
        e = np.zeros(count * k, _ENTRY)
        e["name"][:n] = name_offsets[o]
        e["header"][:n] = header_addrs[o]
        s["entries"] = e.reshape(count, k)
        addrs = at + _SNOD.itemsize * np.arange(count, dtype=np.uint64)
        last = name_offsets[o[np.minimum(np.arange(1, count + 1) * k, n) - 1]] if count else addrs
        return s.tobytes(), addrs, last

    def _tree(self, children: np.ndarray, last_keys: np.ndarray, at: int):
        """The B-tree over `children` (symbol table node addresses), built level by level from the
        leaves; the bytes of all its nodes (from address `at`) and the root's address."""
        per = 2 * TREE_K
        levels, level = [], 0
        first_keys = np.zeros(len(children), np.uint64)   # the empty name bounds every leftmost subtree
        pos = at
        while True:
            count = max(1, -(-len(children) // per))
            t = np.zeros(count, _TREE)
            t["sig"], t["type"], t["level"] = b"TREE", 0, level
            addrs = pos + _TREE.itemsize * np.arange(count, dtype=np.uint64)
            t["left"] = np.concatenate([[UNDEF], addrs[:-1]]).astype(np.uint64)
            t["right"] = np.concatenate([addrs[1:], [UNDEF]]).astype(np.uint64)
            firsts, lasts = np.zeros(count, np.uint64), np.zeros(count, np.uint64)
            for j in range(count):
                c = children[j * per:(j + 1) * per]
                kl = last_keys[j * per:(j + 1) * per]
                m = len(c)
                t["n"][j] = m
                kc = t["kc"][j]
                kc[0] = first_keys[j * per] if m else 0
                kc[1:2 * m:2] = c
                kc[2:2 * m + 1:2] = kl
                firsts[j] = kc[0]
                lasts[j] = kl[-1] if m else 0
            levels.append(t.tobytes())
            pos += t.nbytes
            if count == 1:
                return b"".join(levels), int(addrs[0])
            children, last_keys, first_keys = addrs, lasts, firsts
            level += 1

    def _superblock(self, eof: int, tree: int, heap: int) -> bytes:
        sb = struct.pack("<8s8BHHI4Q", SIGNATURE, 0, 0, 0, 0, 0, 8, 8, 0, LEAF_K, TREE_K, 0,
                         0, UNDEF, eof, UNDEF)
        root_entry = struct.pack("<QQI4xQQ", 0, ROOT_OH, 1, tree, heap)   # cache type 1: the group's stab
        return sb + root_entry

    def _root(self, tree: int, heap: int) -> bytes:
        msg = _message(17, 0, struct.pack("<QQ", tree, heap))            # symbol table message
        return struct.pack("<BBHII4x", 1, 0, 1, 1, len(msg)) + msg

    def open_h5(self):
        """An h5py.File on the finished file, for attributes and other datasets."""
        import h5py

        self.guard.flush()
        return h5py.File(self.guard, "r+")
