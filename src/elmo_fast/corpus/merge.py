"""Concatenating output files of consecutive sentence ranges (a run's pieces, or shards) into one.

`merge_files(parts, output)` checks that the parts are elmo-fast outputs of one model, layout and
settings, that their ranges follow each other, and writes one file whose contents equal what one
process writes for the whole range (allennlp layout: the same datasets and sentence_to_index; flat:
the datasets concatenated, offsets shifted). Written atomically; a failure leaves `output` as it was.
"""
from __future__ import annotations

import json
import os
from typing import Callable, List, Optional, Sequence

import numpy as np

from .._atomic import atomic_path
from .diskio import H5Output, describe_failure
from .embeddings import EmbeddingsError, _File
from .layouts import _STORAGE, write_index

_COPY_BYTES = 64 << 20
# attributes that may differ between parts; all the others must be equal
_PER_PART = {"first_sentence", "n_sentences", "total_tokens", "shard"}


def _open_parts(paths: Sequence[str]) -> List[_File]:
    files: List[_File] = []
    try:
        for p in paths:
            f = _File(p)
            if f.attrs.get("format") != "elmo-fast":
                raise EmbeddingsError(f"{p} was not written by elmo-fast (no layout attributes): "
                                      "cannot merge it")
            files.append(f)
    except BaseException:
        for f in files:
            f.close()
        raise
    files.sort(key=lambda f: f.first)
    first = files[0]
    for f in files[1:]:
        for k in sorted(set(first.attrs) | set(f.attrs)):
            if k not in _PER_PART and first.attrs.get(k) != f.attrs.get(k):
                raise EmbeddingsError(f"cannot merge {f.path} with {first.path}: their {k} differ "
                                      f"({f.attrs.get(k)!r} vs {first.attrs.get(k)!r})")
    pos = first.first
    for f in files:
        if f.first != pos:
            what = "missing" if f.first > pos else "overlapping"
            raise EmbeddingsError(f"cannot merge: {f.path} starts at sentence {f.first} "
                                  f"but the parts before it end at {pos} "
                                  f"({what} sentences {min(pos, f.first)}-{max(pos, f.first) - 1})")
        pos += f.n
    return files


def merge_files(paths: Sequence[str], output: str, label: Optional[str] = None,
                progress: Optional[Callable[[int], None]] = None) -> None:
    """Writes the concatenation of `paths` (any order; ranges must follow each other) to `output`."""
    if not paths:
        raise ValueError("nothing to merge")
    label = label or output
    files = _open_parts(paths)
    try:
        with atomic_path(output) as tmp:
            out = H5Output(tmp, label, create=not _packable(files[0]))
            try:
                _copy(files, out, progress)
                out.check()
            except BaseException:
                out.abort()
                raise
            out.close()
    except OSError as e:
        raise describe_failure(e, label) from None
    finally:
        for f in files:
            f.close()


def _packable(first: _File) -> bool:
    """Whether the output's structure is ours (out.h5 None until the copy opens it): flat parts go
    into an h5flat.ChunkedFile, allennlp parts keyed by number into an h5pack.PackedFile (sentence
    keys may hold '/', which makes groups: those go through h5py's copy)."""
    return not first.keyed   # (a flat file is never keyed)


def _copy(files: List[_File], out: H5Output, progress) -> None:
    first = files[0]
    attrs = dict(first.f.attrs)
    attrs["first_sentence"] = first.first
    attrs["n_sentences"] = sum(f.n for f in files)
    attrs.pop("shard", None)
    if first.layout == "allennlp":
        index = {}
        has_index = "sentence_to_index" in first.f
        later = _copy_packed(files, out, progress) if out.h5 is None else [(f, None) for f in files]
        for f, keys in later:
            for key in f.f.keys() if keys is None else keys:
                if key == "sentence_to_index":
                    continue
                f.f.copy(f.f[key], out.h5, name=key)
            if progress and keys is None:
                progress(f.n)
        for f in files:   # in sentence order: a sentence repeated across parts keeps its last index
            if "sentence_to_index" in f.f:
                index.update(json.loads(f.f["sentence_to_index"][0]))
        if has_index:
            write_index(out.h5, index)
    else:
        _copy_flat(files, out, progress)
        attrs["total_tokens"] = int(sum(int(f.f.attrs["total_tokens"]) for f in files))
    out.h5.attrs.update(attrs)


def _copy_packed(files: List[_File], out: H5Output, progress):
    """The parts' datasets into a PackedFile on out. Where h5pack reads a part's structure (the
    parts elmo-fast writes), its datasets are copied by the kernel, all of a part in one copy where
    they lie one after the other: h5py's copy costs ~0.5 ms a dataset. Other parts: each dataset
    opened by h5py, its bytes read at its address. Leaves out.h5 open on the result; returns the
    [(part, keys)] h5py must still copy (anything but a contiguous dataset of the file's dtype)."""
    from .h5pack import PackedFile, list_datasets

    pk = PackedFile(out.guard, _STORAGE[files[0].dtype])
    later = []
    for f in files:
        stored = list_datasets(f.path)
        with open(f.path, "rb", buffering=0) as raw:
            if stored is None:
                odd = _copy_through_h5py(f, raw, pk)
            else:
                odd = []
                size = os.fstat(raw.fileno()).st_size
                for s in sorted(stored, key=lambda s: s.addr):   # in file order: runs copy at once
                    key = s.name.decode("utf-8")
                    if key == "sentence_to_index":
                        continue
                    if s.dtype_message != pk.dtype_message:
                        odd.append(key)
                        continue
                    if s.nbytes and s.addr + s.nbytes > size:
                        raise EmbeddingsError(f"{f.path} ends inside its dataset {key} (truncated file?)")
                    pk.create_from(s.name, s.shape, raw.fileno(), s.addr)
                pk.close()   # the last copy, while raw is open
        if odd:
            later.append((f, odd))
        if progress:
            progress(f.n)
    pk.finish()
    out.check()
    out.h5 = pk.open_h5()
    return later


def _copy_through_h5py(f: _File, raw, pk) -> List[str]:
    """A part h5pack does not read: each dataset through h5py (bytes read at its address where
    contiguous); returns the keys left for h5py's copy."""
    import h5py

    odd = []
    for key in f.f.keys():
        if key == "sentence_to_index":
            continue
        d = f.f[key]
        if not isinstance(d, h5py.Dataset) or d.dtype != pk.dtype:
            odd.append(key)
            continue
        at = d.id.get_offset()
        nbytes = d.size * pk.dtype.itemsize
        if at is None and nbytes:   # not contiguous (another writer's file)
            data = d[()]
        else:
            data = _pread(raw, nbytes, at) if nbytes else b""
        pk.create(key.encode("utf-8"), d.shape, [data])
    return odd


def _pread(raw, n: int, at: int) -> bytes:
    """n bytes at offset `at` of the open file raw; a short file is an error."""
    chunks = []
    while n:
        b = os.pread(raw.fileno(), n, at)
        if not b:
            raise EmbeddingsError(f"{raw.name} ends inside a dataset (truncated file?)")
        chunks.append(b)
        n -= len(b)
        at += len(b)
    return b"".join(chunks)


def _copy_flat(files: List[_File], out: H5Output, progress) -> None:
    """Each stored layer's rows, part after part, read a chunk at a time (`_row_blocks`) and appended
    ~64 MB at a time to an h5flat.ChunkedFile on out (chunks gathered from the blocks, written
    behind: the one-process file's chunks, at copy speed); then lines, sentences and offsets through
    h5py."""
    from .h5flat import ChunkedFile

    first = files[0]
    names = list(first.stored)
    src0 = first.f[names[0]]
    cf = ChunkedFile(out.guard, names, src0.shape[1], src0.dtype, src0.chunks[0])
    step = max(1, _COPY_BYTES // max(1, src0.dtype.itemsize * src0.shape[1]))
    for f in files:
        for k, name in enumerate(names):
            blocks, held = [], 0
            for rows in _row_blocks(f.f[name], step):   # fresh arrays: alive until written
                blocks.append(rows)
                held += len(rows)
                if held >= step:
                    cf.append(k, blocks)
                    blocks, held = [], 0
            cf.append(k, blocks)
        if progress:
            progress(f.n)
    cf.finish()
    out.check()
    dst = out.h5 = cf.open_h5()
    for name in names:
        for k, v in first.f[name].attrs.items():
            dst[name].attrs[k] = v
    for name in ["lines"] + (["sentences"] if "sentences" in first.f else []):
        src0 = first.f[name]
        total = sum(f.f[name].shape[0] for f in files)
        ds = dst.create_dataset(name, (total,), maxshape=(None,), dtype=src0.dtype, chunks=src0.chunks)
        pos = 0
        for f in files:
            src = f.f[name]
            for a in range(0, src.shape[0], 1 << 16):
                block = src[a:a + (1 << 16)]
                ds[pos + a:pos + a + len(block)] = block
            pos += src.shape[0]
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for f in files:
        o = f.f["offsets"][()]
        offsets.append(o[1:] + base)
        base += int(o[-1])
    offsets = np.concatenate(offsets)
    dst.create_dataset("offsets", data=offsets, maxshape=(None,), chunks=first.f["offsets"].chunks)


def _row_blocks(d, step: int):
    """The rows of a [rows, D] dataset d, in order, as arrays: each stored chunk's bytes as they are
    (H5Dread_chunk: ~4x faster than a selection, which goes through the chunk cache) where its
    chunks are whole rows and unfiltered (the files elmo-fast writes); otherwise blocks of `step`
    rows read by h5py."""
    n = d.shape[0]
    plain = (d.chunks is not None and d.chunks[1:] == d.shape[1:] and d.compression is None
             and not d.shuffle and not d.fletcher32 and d.scaleoffset is None)
    if not plain:
        for a in range(0, n, step):
            yield d[a:a + step]
        return
    rows = d.chunks[0]
    for a in range(0, n, rows):
        try:
            mask, raw = d.id.read_direct_chunk((a,) + (0,) * (d.ndim - 1))
        except (KeyError, ValueError, RuntimeError):   # a chunk never written (rows: the fill value)
            mask, raw = None, None
        if mask != 0:   # missing, or filtered after all: the selection reads it
            yield d[a:a + rows]
            continue
        yield np.frombuffer(raw, d.dtype).reshape((rows,) + d.shape[1:])[:n - a]


def merge_into(output: str, paths: Sequence[str]) -> int:
    """`elmo-fast merge OUTPUT PART...`: checks, merges; returns the number of sentences."""
    out = os.path.abspath(output)
    for p in paths:
        if not os.path.exists(p):
            raise EmbeddingsError(f"no such file to merge: {p}")
        if os.path.exists(out) and os.path.samefile(p, out):
            raise EmbeddingsError(f"the output {output} is also one of the files to merge")
    files = _open_parts(paths)
    n = sum(f.n for f in files)
    for f in files:
        f.close()
    merge_files(paths, out, label=output)
    return n
