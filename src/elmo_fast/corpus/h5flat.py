"""Growing [rows, D] chunked datasets in an hdf5 file, written without libhdf5: the flat layout at disk speed.

libhdf5 writes a chunk only from one contiguous buffer (H5Dwrite_chunk), so rows that arrive as many
pieces (a sentence's rows from each batch output, in input order) had to be copied into a window
buffer first: for `--all` float32 that copy doubled the memory traffic of the write, and the job
reached 0.6x the raw write. Here each chunk is gathered by pwritev straight from the pieces, and the
chunks are appended to the file in one sequential stream, in a thread of their own; only the rows of
a last partial chunk are copied (at most a chunk per dataset per call). Where the caller knows how
many rows will come, the free space is checked first (`check_room`), so a full disk is found at the
start. The structure is written once at the end (h5pack.write_structure), in the v0 format h5py
writes by default (libver "earliest"):

  [superblock v0 | root group | chunks of every dataset, in the order completed |
   per dataset its chunk B-tree, then its object header | names | symbol table nodes | group B-tree]

A dataset's chunks are indexed by a version-1 B-tree of type 1 (HDF5 File Format Specification 3.0,
III.A.1) with libhdf5's K for chunk indexes in a version-0 superblock (32: 64 chunks a node). Key i
of a node is (chunk bytes, filter mask 0, the row offset of its child's first chunk, 0, 0); the last
key of a node is the first key of the next node, and the very last key (0, 0, the end of the last
chunk in every dimension: row offset + chunk rows, D, itemsize), as libhdf5 writes them. The object
header (version 1) holds the messages libhdf5 writes for such a dataset: dataspace (v1, max dims
(unlimited, D)), datatype (H5Tencode), fill value (v2: allocated incrementally, filled if set,
default) and layout (v3, chunked: B-tree address, chunk dims and itemsize), then 120 free bytes, as
libhdf5 leaves for attributes. `open_h5()` then hands the file to h5py ("r+") for the rest.
"""
from __future__ import annotations

import array
import struct
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .h5direct import _WritesBehind
from .h5pack import DATA_START, UNDEF, _message, dtype_message, open_h5, siblings, write_structure

CHUNK_K = 32                                   # libhdf5's default for chunk B-trees: 64 children a node
_FILL = bytes([2, 3, 2, 1, 0, 0, 0, 0])        # fill value v2: incremental, if set, default value
_FREE = 120                                    # the free message libhdf5 leaves in a new header
_KEY = np.dtype([("size", "<u4"), ("mask", "<u4"), ("offset", "<u8", (3,))])                  # 32 bytes
_NODE = np.dtype([("sig", "S4"), ("type", "u1"), ("level", "u1"), ("n", "<u2"), ("left", "<u8"),
                  ("right", "<u8"), ("entries", [("key", _KEY), ("child", "<u8")], (2 * CHUNK_K,)),
                  ("last", _KEY)])                                                            # 2616 bytes


class ChunkedFile:
    """Datasets `names`, each [rows, dim] of `dtype` in chunks of `chunk_rows` rows (maxshape
    (None, dim)), written into a new hdf5 file through `guard` (a diskio.GuardedFile, empty).

    `append(k, parts)` adds rows to dataset k; `finish` pads each last chunk with zeros (the extent
    hides them) and writes the structure; `open_h5` then gives an h5py.File ("r+") on it. At most
    `limit` appends (default: one per dataset) wait in the writes-behind thread, each keeping its
    parts alive."""

    def __init__(self, guard, names: Sequence[str], dim: int, dtype, chunk_rows: int,
                 limit: Optional[int] = None):
        self.guard = guard
        self.names = [n.encode("utf-8") for n in names]
        self.dim, self.dtype, self.chunk = int(dim), np.dtype(dtype), int(chunk_rows)
        self.chunk_bytes = self.chunk * self.dim * self.dtype.itemsize
        self.rows = [0] * len(names)
        self.chunks = [array.array("Q") for _ in names]   # each dataset's chunk addresses, in row order
        self.tails = [np.zeros((self.chunk, self.dim), self.dtype) for _ in names]
        self.held = [0] * len(names)                       # rows waiting in each tail
        self.end = DATA_START
        self.limit = limit or len(names)
        self._behind: Optional[_WritesBehind] = None
        self.dtype_message = dtype_message(self.dtype)

    # ---------------------------------------------------------------------------------- room
    def check_room(self, rows: Sequence[int]) -> None:
        """Fails now when the file system has no room for the chunks of rows[k] rows of each dataset
        k (rows the caller knows will come; more may): the failure is kept in the guard (the
        output's full-disk error at its next check, later writes dropped), so a disk too small for a
        piece is found at its start, not when most of it is written. A free-space check, not a
        reservation: fallocate ahead of the writes was no faster on a RAM disk, and writing while
        it ran made both 2-4x slower (bench/NOTES.md, issue 8, eighth session)."""
        need = sum(-(-int(r) // self.chunk) for r in rows) * self.chunk_bytes
        if need > 0:
            self.guard.check_room(DATA_START + need)

    # ------------------------------------------------------------------------------------ data
    def append(self, k: int, parts: Sequence[np.ndarray]) -> None:
        """Rows `parts` (C-contiguous [n_i, dim] arrays of the stored dtype, in order) at the end of
        dataset k. Whole chunks are gathered from the parts and written by the writes-behind thread:
        the parts must not change until `drain` (or `close`); the rows of a last partial chunk are
        copied here and wait for the next append."""
        for a in parts:   # all checked first: a bad part changes nothing
            if a.dtype != self.dtype or a.shape[1:] != (self.dim,) or not a.flags.c_contiguous:
                raise TypeError(f"rows of {a.dtype} {a.shape[1:]} (contiguous: {a.flags.c_contiguous}) "
                                f"for a dataset of {self.dtype} ({self.dim},)")
        chunk, tail, held = self.chunk, self.tails[k], self.held[k]
        run: list = []                     # buffers of the chunks completed, consecutive in the file
        run_at = self.end
        cur: list = [None] if held else []   # the chunk being gathered; None: the tail's rows
        have = held
        for a in parts:
            n, i = len(a), 0
            self.rows[k] += n
            while i < n:
                take = min(chunk - have, n - i)
                cur.append(a if take == n else a[i:i + take])
                have += take
                i += take
                if have == chunk:
                    if cur[0] is None:   # a copy: the tail takes new rows before this is written
                        cur[0] = tail[:held].copy()
                    run.extend(cur)
                    cur, have = [], 0
                    self.chunks[k].append(self.end)
                    self.end += self.chunk_bytes
        if run:
            if self._behind is None:
                self._behind = _WritesBehind(self.guard, self.limit)
            self._behind.put(run_at, run)
        pos, rest = (held, cur[1:]) if cur and cur[0] is None else (0, cur)
        for a in rest:
            tail[pos:pos + len(a)] = a
            pos += len(a)
        self.held[k] = have

    def after(self, fn) -> None:
        """Calls fn (in the writes-behind thread) once every chunk handed over so far is written, or
        now when none is in flight: the parts appended before may then be reused. A failed write
        does not stop it (the failure is the guard's)."""
        if self._behind is None:
            fn()
        else:
            self._behind.after(fn)

    def drain(self) -> None:
        """Waits until every chunk handed over is written (an error in the thread is raised)."""
        if self._behind is not None:
            self._behind.drain()

    def close(self, raise_error: bool = True) -> None:
        """Waits for the writes in flight and stops their thread."""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.close(raise_error)

    # ------------------------------------------------------------------------------- structure
    def finish(self) -> None:
        """Writes each last partial chunk (zero-padded), then the chunk indexes, the headers, the
        names, the group's B-tree and the superblock."""
        self.close()
        for k, tail in enumerate(self.tails):
            if self.held[k]:
                tail[self.held[k]:] = 0
                self.chunks[k].append(self.end)
                self.guard.write_at(self.end, [tail])
                self.end += self.chunk_bytes
                self.held[k] = 0
        self.eof = write_structure(self.guard, self.end, self.names, self._headers)

    def open_h5(self):
        return open_h5(self.guard)

    def _headers(self, at: int) -> Tuple[bytes, np.ndarray]:
        """Per dataset its chunk B-tree then its object header, from address `at`; the headers'
        addresses."""
        blob: List[bytes] = []
        addrs = np.empty(len(self.names), np.uint64)
        for k in range(len(self.names)):
            tree, root = self._tree(np.frombuffer(self.chunks[k], np.uint64), at)
            blob.append(tree)
            at += len(tree)
            header = self._header(self.rows[k], root)
            addrs[k] = at
            blob.append(header)
            at += len(header)
        return b"".join(blob), addrs

    def _header(self, rows: int, tree: int) -> bytes:
        space = struct.pack("<BBB5x4Q", 1, 2, 1, rows, self.dim, UNDEF, self.dim)   # v1, rank 2, max dims
        layout = struct.pack("<BBBQ3I", 3, 2, 3, tree, self.chunk, self.dim, self.dtype.itemsize)
        msgs = (_message(1, 0, space) + _message(3, 1, self.dtype_message) + _message(5, 1, _FILL)
                + _message(8, 0, layout) + _message(0, 0, bytes(_FREE)))
        return struct.pack("<BBHII4x", 1, 0, 5, 1, len(msgs)) + msgs

    def _tree(self, chunks: np.ndarray, at: int) -> Tuple[bytes, int]:
        """The B-tree indexing `chunks` (addresses, in row order), level by level from the leaves,
        from address `at`: its bytes and the root's address (UNDEF, no bytes, without chunks)."""
        n = len(chunks)
        if not n:
            return b"", UNDEF
        per = 2 * CHUNK_K
        keys = np.zeros(n, _KEY)
        keys["size"] = self.chunk_bytes
        keys["offset"][:, 0] = np.arange(n, dtype=np.uint64) * np.uint64(self.chunk)
        final = np.zeros(1, _KEY)
        final["offset"][0] = (n * self.chunk, self.dim, self.dtype.itemsize)
        children, levels, level, pos = chunks, [], 0, at
        while True:
            count = -(-len(children) // per)
            t = np.zeros(count, _NODE)
            t["sig"], t["type"], t["level"] = b"TREE", 1, level
            node_addrs = pos + _NODE.itemsize * np.arange(count, dtype=np.uint64)
            t["left"], t["right"] = siblings(node_addrs)
            # a node's right key: the next node's first; the last node's: the end of the last chunk
            right = np.concatenate([keys, final])[np.minimum(np.arange(1, count + 1) * per, len(children))]
            for j in range(count):
                a, b = j * per, min((j + 1) * per, len(children))
                t["n"][j] = m = b - a
                t["entries"]["key"][j, :m] = keys[a:b]
                t["entries"]["child"][j, :m] = children[a:b]
                if m < per:   # keys and children alternate from the start: the right key follows child m - 1
                    t["entries"]["key"][j, m] = right[j]
                else:
                    t["last"][j] = right[j]
            levels.append(t.tobytes())
            pos += t.nbytes
            if count == 1:
                return b"".join(levels), int(node_addrs[0])
            children, keys, level = node_addrs, keys[::per].copy(), level + 1
