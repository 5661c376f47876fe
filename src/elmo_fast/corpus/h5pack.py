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

`list_datasets` reads that structure back (for merging parts: `create_from` then copies a part's
datasets by the kernel, in runs). Names: any bytes but b"/" and NUL, each used once (checked when
the names are sorted, at `finish`). Format: HDF5 File Format Specification 3.0, sections II.A
(superblock), III.A.1 (v1 B-trees), III.B-D (symbol table nodes and entries, local heaps), IV.A
(object headers and messages).
"""
from __future__ import annotations

import array
import contextlib
import struct
from typing import List, NamedTuple, Optional, Sequence, Tuple

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


def dtype_message(dtype) -> bytes:
    """The body of a datatype message for numpy `dtype`, as libhdf5 encodes it (H5Tencode), padded
    to 8."""
    import h5py

    return _pad8(h5py.h5t.py_create(np.dtype(dtype)).encode()[2:])


def siblings(addrs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The left and right sibling addresses of B-tree nodes of one level at `addrs` (UNDEF at the
    ends)."""
    return (np.concatenate([[UNDEF], addrs[:-1]]).astype(np.uint64),
            np.concatenate([addrs[1:], [UNDEF]]).astype(np.uint64))


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
    `open_h5` then gives an h5py.File ("r+") on it. limit: runs of datasets in flight in the writes-
    behind thread (each keeps its arrays alive: a batch's model output, when the writer passes those)."""

    def __init__(self, guard, dtype, limit: int = 4):
        self.guard = guard
        self.dtype = np.dtype(dtype)
        # per dataset, compact (a piece holds up to 100 k): name, rank, dims (flat), data address
        self.names: List[bytes] = []
        self.ranks = array.array("B")
        self.dims = array.array("q")
        self.addrs = array.array("Q")
        self.end = DATA_START
        self.limit = limit
        self._run: list = []            # buffers of the datasets not yet handed to the writes
        self._run_at = DATA_START
        self._deferring = False         # inside writes_behind
        self._copy: Optional[list] = None   # [src fd, src offset, bytes, address]: a pending copy
        self._behind: Optional[_WritesBehind] = None
        self.dtype_message = dtype_message(self.dtype)   # as list_datasets gives it
        # datatype (constant) as libhdf5 encodes it; fill value v2: allocated early, never filled, default
        self._middle = _message(3, 1, self.dtype_message) + _message(5, 1, bytes([2, 1, 1, 1, 0, 0, 0, 0]))

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
        written (see there); outside, they are written before create returns."""
        if self._copy is not None:
            self._hand_over()
        if self._record(name, shape):
            self._run.extend(parts)
            if not self._deferring or len(self._run) >= _IOV:
                self._hand_over()

    def create_from(self, name: bytes, shape: Tuple[int, ...], src: int, src_offset: int) -> None:
        """Dataset `name` of `shape` whose bytes are at src_offset in the open file descriptor src
        (another file's dataset, `list_datasets`): copied by the kernel, datasets whose sources
        follow each other in one copy (done by the next create, close or finish). Not inside
        writes_behind."""
        assert not self._deferring
        if self._run:
            self._hand_over()
        at = self.end
        n = self._record(name, shape)
        if not n:
            return
        c = self._copy
        if c is not None and c[0] == src and c[1] + c[2] == src_offset and c[3] + c[2] == at:
            c[2] += n
        else:
            self._copy_now()
            self._copy = [src, src_offset, n, at]
        self._run_at = self.end

    def _record(self, name: bytes, shape: Tuple[int, ...]) -> int:
        """Checks the name, gives the dataset its address (the end of the data so far): its bytes."""
        if b"/" in name or b"\0" in name or not name:
            raise ValueError(f"cannot store a dataset named {name!r} in a packed file")
        shape = tuple(map(int, shape))
        nbytes = self.dtype.itemsize
        for s in shape:
            nbytes *= s
        self.names.append(name)
        self.ranks.append(len(shape))
        self.dims.extend(shape)
        self.addrs.append(self.end if nbytes else UNDEF)
        self.end += nbytes
        return nbytes

    def _copy_now(self) -> None:
        c, self._copy = self._copy, None
        if c is not None:
            self.guard.copy_at(c[3], c[0], c[1], c[2])

    def _hand_over(self) -> None:
        self._copy_now()
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
        self.eof = write_structure(self.guard, self.end, self.names, self._headers)

    def open_h5(self):
        """An h5py.File on the finished file, for attributes and other datasets."""
        return open_h5(self.guard)

    def _headers(self, at: int) -> Tuple[bytes, np.ndarray]:
        """Object headers of all datasets, in the order added, from address `at`; their addresses."""
        n = len(self.names)
        addrs = np.empty(n, np.uint64)
        if not n:
            return b"", addrs
        ranks = np.frombuffer(self.ranks, np.uint8).astype(np.int64)
        starts = np.cumsum(ranks) - ranks
        flat_dims = np.frombuffer(self.dims, np.int64).astype(np.uint64)
        all_addrs = np.frombuffer(self.addrs, np.uint64)
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
            dims = flat_dims[starts[idx][:, None] + np.arange(rank)]
            h["dims"], h["maxdims"] = dims, dims
            h["middle"] = np.frombuffer(self._middle, f"V{len(self._middle)}")[0]
            size = np.prod(dims, axis=1, dtype=np.uint64) * np.uint64(self.dtype.itemsize)
            # layout, 24 bytes; marked constant once storage is allocated (libhdf5 leaves empty ones not)
            h["layout_msg"] = np.uint64(8 | (24 << 16)) | ((size > 0).astype(np.uint64) << np.uint64(32))
            h["layout"] = 3 | (1 << 8)                                # version 3, contiguous
            h["addr"] = all_addrs[idx]
            h["size"] = size
            addrs[idx] = pos + dt.itemsize * np.arange(len(idx), dtype=np.uint64)
            pos += h.nbytes
            blob.append(h.tobytes())
        return b"".join(blob), addrs

# ---------------------------------------------------------------------------------------- structure
def write_structure(guard, end: int, names: List[bytes], headers) -> int:
    """The rest of a file whose data end at `end`: the object headers (`headers(at)` -> their bytes
    from address `at`, and each dataset's header address, in the order of `names`), the local heap
    of the names, the symbol table nodes, the root group's B-tree and the superblock; the end of the
    file. Names are checked for repeats here (sorted, a repeat sits next to itself)."""
    n = len(names)
    order = sorted(range(n), key=names.__getitem__)
    for a, b in zip(order, order[1:]):
        if names[a] == names[b]:
            raise ValueError(f"the dataset name {names[a].decode('utf-8', 'replace')!r} is used twice")
    at = end + (-end % 8)
    blob, header_addrs = headers(at)
    at += len(blob)
    heap_addr = at
    heap, name_offsets = _heap(names, order, heap_addr + 32)
    at += len(heap)
    snods, snod_addrs, last_names = _snods(order, header_addrs, name_offsets, at)
    at += len(snods)
    tree, tree_addr = _tree(snod_addrs, last_names, at)
    eof = at + len(tree)
    guard.write_at(end, [b"\0" * (-end % 8), blob, heap, snods, tree])
    guard.write_at(0, [_superblock(eof, tree_addr, heap_addr), _root(tree_addr, heap_addr)])
    return eof


def _heap(names: List[bytes], order: List[int], data_addr: int) -> Tuple[bytes, np.ndarray]:
    """The local heap (32-byte header, then the data segment: b"" then every name, NUL-ended,
    each padded to 8) and each dataset's name offset."""
    offsets = np.empty(len(names), np.uint64)
    parts, pos = [b"\0" * 8], 8
    for i in order:
        b = _pad8(names[i] + b"\0")
        offsets[i] = pos
        parts.append(b)
        pos += len(b)
    data = b"".join(parts)
    head = struct.pack("<4sB3xQQQ", b"HEAP", 0, len(data), _FREE_NULL, data_addr)
    return head + data, offsets

def _snods(order, header_addrs, name_offsets, at: int):
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

def _tree(children: np.ndarray, last_keys: np.ndarray, at: int):
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
        t["left"], t["right"] = siblings(addrs)
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

def _superblock(eof: int, tree: int, heap: int) -> bytes:
    sb = struct.pack("<8s8BHHI4Q", SIGNATURE, 0, 0, 0, 0, 0, 8, 8, 0, LEAF_K, TREE_K, 0,
                     0, UNDEF, eof, UNDEF)
    root_entry = struct.pack("<QQI4xQQ", 0, ROOT_OH, 1, tree, heap)   # cache type 1: the group's stab
    return sb + root_entry

def _root(tree: int, heap: int) -> bytes:
    msg = _message(17, 0, struct.pack("<QQ", tree, heap))            # symbol table message
    return struct.pack("<BBHII4x", 1, 0, 1, 1, len(msg)) + msg

def open_h5(guard):
    """An h5py.File ("r+") on a finished file, for attributes and other datasets: libhdf5 itself
    then extends the structure written here."""
    import h5py

    guard.flush()
    return h5py.File(guard, "r+")


# ------------------------------------------------------------------------------------------ reading
class Stored(NamedTuple):
    """A dataset as stored: name, shape, its datatype message (body, padded to 8), data address
    (UNDEF when it has no storage) and size in bytes."""

    name: bytes
    shape: Tuple[int, ...]
    dtype_message: bytes
    addr: int
    nbytes: int


class _Unknown(Exception):
    """Something `list_datasets` does not read (a later format, a group, chunked data...)."""


def list_datasets(path: str) -> Optional[List[Stored]]:
    """The datasets in the root group of an hdf5 file in the format PackedFile writes (superblock
    v0, version-1 object headers: also libhdf5's own files with libver "earliest"), in name order,
    read from the file's structure: ~10 us a dataset, where opening each through h5py costs 80-150 us
    in a group of 20 k. None when the file holds anything else (a later format, a group, a
    dataset whose data are not one contiguous block): the caller then goes through h5py."""
    import mmap

    with open(path, "rb") as fh:
        try:
            m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:   # an empty file
            return None
        try:
            return _Reader(m).datasets()
        except (_Unknown, struct.error, IndexError, ValueError):
            return None
        finally:
            m.close()


class _Reader:
    def __init__(self, m):
        self.m = m

    def u(self, fmt: str, at: int):
        return struct.unpack_from(fmt, self.m, at)

    def datasets(self) -> List[Stored]:
        m = self.m
        if m[:8] != SIGNATURE or m[8] != 0 or m[13] != 8 or m[14] != 8:
            raise _Unknown("not a version-0 superblock with 8-byte addresses")
        (root,) = self.u("<Q", 64)
        stab = [body for kind, body in self.messages(root) if kind == 17]
        if len(stab) != 1:
            raise _Unknown("the root group has no symbol table")
        tree, heap = struct.unpack_from("<QQ", stab[0])
        sig, _, size, _, data = self.u("<4sB3xQQQ", heap)
        if sig != b"HEAP":
            raise _Unknown("no local heap")
        names = bytes(m[data:data + size])
        out: List[Stored] = []
        for name_at, header in self.entries(tree):
            end = names.index(b"\0", name_at)
            out.append(self.dataset(names[name_at:end], header))
        return out

    def entries(self, node: int):
        """(name offset, object header address) of every symbol under B-tree node `node`, in order."""
        sig, kind, level, n = self.u("<4sBBH", node)
        if sig != b"TREE" or kind != 0:
            raise _Unknown("not a group B-tree node")
        for i in range(n):
            (child,) = self.u("<Q", node + 32 + 16 * i)
            if level:
                yield from self.entries(child)
                continue
            sig, count = self.u("<4s2xH", child)
            if sig != b"SNOD":
                raise _Unknown("not a symbol table node")
            for j in range(count):
                name_at, header, cache = self.u("<QQI", child + 8 + 40 * j)
                if cache != 0:
                    raise _Unknown("a group or a soft link")
                yield name_at, header

    def messages(self, at: int):
        """(type, body) of the messages of the version-1 object header at `at`, continuations
        followed."""
        version, _, count, _, size = self.u("<BBHII", at)
        if version != 1:
            raise _Unknown("not a version-1 object header")
        chunks = [(at + 16, size)]
        seen = 0
        while chunks:
            pos, size = chunks.pop(0)
            end = pos + size
            while pos < end and seen < count:
                kind, n = self.u("<HH", pos)
                body = bytes(self.m[pos + 8:pos + 8 + n])
                if kind == 16:   # continuation: address, length
                    chunks.append(struct.unpack_from("<QQ", body))
                yield kind, body
                seen += 1
                pos += 8 + n

    def dataset(self, name: bytes, header: int) -> Stored:
        space = dtype = layout = None
        for kind, body in self.messages(header):
            if kind == 1:
                space = body
            elif kind == 3:
                dtype = body
            elif kind == 8:
                layout = body
            elif kind in (11, 17, 2, 10):   # filters; a group's symbol table, link info, group info
                raise _Unknown("filtered data or a group")
        if space is None or dtype is None or layout is None:
            raise _Unknown("not a dataset")
        version, rank = space[0], space[1]
        if version == 1:
            dims = struct.unpack_from(f"<{rank}Q", space, 8)
        elif version == 2 and space[3] in (0, 1):
            dims = struct.unpack_from(f"<{rank}Q", space, 4)
        else:
            raise _Unknown("a dataspace this reader does not know")
        if layout[0] != 3 or layout[1] != 1:
            raise _Unknown("not a contiguous layout (version 3)")
        addr, nbytes = struct.unpack_from("<QQ", layout, 2)
        return Stored(name, tuple(dims), _pad8(dtype), addr, nbytes)
