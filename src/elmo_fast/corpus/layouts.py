"""Output layouts: what goes into an hdf5 file for a run of consecutive sentences.

Every file (a whole output, a shard, a piece of a run) covers sentences first .. first + n - 1 and
records in root attributes: format "elmo-fast", layout, output_format (all | top | average), pool
(none | mean), dtype (float32 | float16 | bfloat16), first_sentence, n_sentences, the model identity
and options (model_sha256, options), mode (stateful | stateless), warm_start, compute_dtype.

allennlp (compatible, one hdf5 dataset per sentence): key str(i) (or the sentence itself with
  use_sentence_keys): [3, T, D] for all, [T, D] for top / average; pooled: [3, D] / [D];
  "sentence_to_index": shape (1,) vlen str, JSON {sentence: "i"} (last index of a repeat), unless
  forget_sentences or use_sentence_keys. float32 values are those of allennlp's embed_file. Each
  dataset is contiguous. The file is in the format allennlp's own files have (h5py's default,
  libver "earliest"), its structure written by h5pack.py, not libhdf5; the only difference from
  h5py's defaults a reader can see is in each dataset's creation properties (storage allocated at
  creation, never filled). With use_sentence_keys (keys may hold '/', which makes groups) libhdf5
  makes the datasets (h5direct.py) in a libver "latest" file.
flat (fast): per stored layer one chunked dataset, "layer_0", "layer_1", "layer_2" for all, "top"
  or "average" otherwise: [total_tokens, D] (pooled: [n, D]); "offsets" [n + 1] int64 (sentence i is
  rows offsets[i] .. offsets[i+1] - 1; pooled files keep the offsets for the lengths); "lines" [n]
  int64, the input line of each sentence; "sentences" [n] vlen str unless forget_sentences.

bfloat16 has no numpy dtype: it is stored as uint16 holding the upper 16 bits of the float32 bit
pattern (round to nearest even), with attribute dtype="bfloat16" on the file and on each flat
dataset; decode with `(a.astype(np.uint32) << 16).view(np.float32)` (`decode` does).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

LAYOUTS = ("allennlp", "flat")
OUTPUT_FORMATS = ("all", "top", "average")
DTYPES_OUT = ("float32", "float16", "bfloat16")
POOLS = ("none", "mean")
FORMAT = "elmo-fast"
_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_CHUNK_BYTES = 1 << 20


@dataclass
class OutputSpec:
    """What a run writes. `attrs`: the model identity and settings recorded in every file."""

    layout: str = "allennlp"
    output_format: str = "all"
    dtype_out: str = "float32"
    pool: str = "none"
    forget_sentences: bool = False
    use_sentence_keys: bool = False
    num_layers: int = 3
    dim: int = 1024
    attrs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name, value, allowed in (("layout", self.layout, LAYOUTS),
                                     ("output_format", self.output_format, OUTPUT_FORMATS),
                                     ("dtype_out", self.dtype_out, DTYPES_OUT), ("pool", self.pool, POOLS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.use_sentence_keys and self.layout != "allennlp":
            raise ValueError("use_sentence_keys needs the allennlp layout "
                             "(the flat layout indexes by number)")

    @property
    def stored(self) -> List[str]:
        """Names of the stored layers."""
        if self.output_format == "all":
            return [f"layer_{k}" for k in range(self.num_layers)]
        return [self.output_format]

    @property
    def storage_dtype(self):
        return _STORAGE[self.dtype_out]

    @property
    def pooled(self) -> bool:
        return self.pool == "mean"

    def root_attrs(self, first: int, n: int) -> Dict[str, Any]:
        a = {"format": FORMAT, "layout": self.layout, "output_format": self.output_format, "pool": self.pool,
             "dtype": self.dtype_out, "first_sentence": first, "n_sentences": n,
             "stored": json.dumps(self.stored)}
        a.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in self.attrs.items()})
        return a

    def settings(self) -> Dict[str, Any]:
        """The settings that change the file (for the manifest)."""
        return {"layout": self.layout, "output_format": self.output_format, "dtype_out": self.dtype_out,
                "pool": self.pool, "forget_sentences": self.forget_sentences,
                "use_sentence_keys": self.use_sentence_keys}


def to_storage(x, dtype_out: str):
    """A float torch tensor -> its stored form (float32, float16, or bfloat16 bits as int16)."""
    import torch

    if dtype_out == "float32":
        return x.float()
    if dtype_out == "float16":
        return x.to(torch.float16)
    return x.to(torch.bfloat16).view(torch.int16)


def decode(a: np.ndarray, dtype_out: str) -> np.ndarray:
    """Stored array -> numpy values: float32 / float16 as they are, bfloat16 bits -> float32."""
    if dtype_out == "bfloat16":
        return (np.asarray(a).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a)


@dataclass
class WindowOut:
    """Consecutive sentences start .. start + n - 1, computed. data: [L_s, rows, D] in the storage
    dtype, rows = tokens in input order (offsets from lengths) or, pooled, one row per sentence."""

    start: int
    lines: List[int]
    text: List[str]
    lengths: np.ndarray
    data: np.ndarray


class AllennlpWriter:
    """One dataset per sentence (see the module doc): the bytes of each go to the file straight from
    the window's array, with no copy for any format. out: the piece's diskio.H5Output.

    Datasets are made by h5pack.PackedFile (the file's structure written at the end, without
    libhdf5) when out has no h5py.File yet (`open_output`), else by h5direct.DatasetMaker (libhdf5's
    own datasets: sentence keys, which may hold '/' and make groups)."""

    def __init__(self, out, spec: OutputSpec, first: int):
        self.out, self.spec, self.first, self.n = out, spec, first, 0
        self.index: Dict[str, str] = {}
        self.keep_index = not (spec.forget_sentences or spec.use_sentence_keys)
        if out.h5 is None:
            from .h5pack import PackedFile

            self.maker = PackedFile(out.guard, spec.storage_dtype)
        else:
            from .h5direct import DatasetMaker

            self.maker = DatasetMaker(out.h5, out.guard, spec.storage_dtype)

    def add(self, w: WindowOut) -> None:
        spec = self.spec
        every = spec.output_format == "all"
        off = 0
        with self.maker.writes_behind():   # w.data is given back when add returns: written by then
            for j, n in enumerate(w.lengths.tolist()):
                i = w.start + j
                if spec.pooled:
                    arr = w.data[:, j] if every else w.data[0, j]
                else:
                    arr = w.data[:, off:off + n] if every else w.data[0, off:off + n]
                    off += n
                key = w.text[j] if spec.use_sentence_keys else str(i)
                self._create(key, arr)
                if self.keep_index:
                    self.index[w.text[j]] = str(i)
        self.n += len(w.lengths)

    def add_batch(self, w, j: int, out: np.ndarray) -> None:
        """Batch j of window w (a batching.Window) straight from the model's output, out: [B, L_s, T, D]
        float32 (row r: sentence w.batches[j][r]); `end_window` completes the window."""
        every = self.spec.output_format == "all"
        with self.maker.writes_behind(wait=False):   # out is the model's own, not reused: no need to wait
            for r, pos in enumerate(w.batches[j]):
                n = int(w.lengths[pos])
                self._create(self._key(w, pos), out[r, :, :n] if every else out[r, 0, :n])

    def end_window(self, w) -> None:
        """After all of w's batches: its sentences without tokens, the index, the count."""
        empty = np.zeros((self.spec.num_layers, 0, self.spec.dim) if self.spec.output_format == "all"
                         else (0, self.spec.dim), self.spec.storage_dtype)
        for pos in np.flatnonzero(w.lengths == 0).tolist():
            self._create(self._key(w, pos), empty)
        if self.keep_index:
            for j, text in enumerate(w.text):
                self.index[text] = str(w.start + j)
        self.n += len(w.lengths)

    def abort(self) -> None:
        """The file is being deleted: stop the writes in flight, whatever they met."""
        self.maker.close(raise_error=False)

    def _key(self, w, pos: int) -> str:
        return w.text[pos] if self.spec.use_sentence_keys else str(w.start + pos)

    def _create(self, key: str, arr: np.ndarray) -> None:
        """arr: C-contiguous, or (all layers) [L, ...] whose rows arr[k] are (slices of the window)."""
        parts = (arr,) if arr.flags.c_contiguous else [np.ascontiguousarray(a) for a in arr]
        self.maker.create(key.encode("utf-8"), arr.shape, parts)

    def finish(self) -> None:
        self.maker.close()   # every vector written (or the write error raised) before the file closes
        if self.out.h5 is None:
            self.maker.finish()
            self.out.check()   # a failed write: the error, not h5py's view of a broken file
            self.out.h5 = self.maker.open_h5()
        if self.keep_index:
            write_index(self.out.h5, self.index)
        self.out.h5.attrs.update(self.spec.root_attrs(self.first, self.n))


def write_index(f, index: Dict[str, str]) -> None:
    """allennlp's sentence_to_index dataset: (1,) vlen str holding the JSON."""
    import h5py

    ds = f.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
    ds[0] = json.dumps(index)


def chunk_rows(dim: int, itemsize: int) -> int:
    return max(1, _CHUNK_BYTES // max(1, dim * itemsize))


class ChunkRows:
    """One growing [rows, D] dataset written a whole chunk at a time (H5Dwrite_chunk).

    Rows arrive in order. Whole chunks go to the file straight from the caller's array, with no
    hyperslab selection, chunk cache or conversion on the way; the last partial chunk waits in
    `tail` for the next rows, so no chunk is ever read back or written twice. `finish` writes the
    tail zero-padded (the dataset's extent hides the padding; zeros keep the bytes deterministic)."""

    def __init__(self, ds, chunk: int):
        self.ds, self.chunk = ds, chunk
        self.tail = np.zeros((chunk,) + ds.shape[1:], ds.dtype)
        self.held = 0      # rows in tail
        self.written = 0   # rows in whole chunks already in the file
        self.rows = 0      # rows added

    def add(self, a: np.ndarray) -> None:
        """a: [n, D] in the dataset's dtype (its bytes go to the file as they are)."""
        if a.dtype != self.tail.dtype or a.shape[1:] != self.tail.shape[1:]:
            raise TypeError(f"rows of {a.dtype} {a.shape[1:]} for a dataset of "
                            f"{self.tail.dtype} {self.tail.shape[1:]}")
        n = len(a)
        if n == 0:
            return
        self.rows += n
        self.ds.resize(self.rows, 0)   # a chunk can only be written inside the extent
        i = 0
        if self.held:
            i = min(self.chunk - self.held, n)
            self.tail[self.held:self.held + i] = a[:i]
            self.held += i
            if self.held < self.chunk:
                return
            self._put(self.tail)
            self.held = 0
        while n - i >= self.chunk:
            self._put(np.ascontiguousarray(a[i:i + self.chunk]))
            i += self.chunk
        if i < n:
            self.tail[:n - i] = a[i:]
            self.held = n - i

    def _put(self, block: np.ndarray) -> None:
        self.ds.id.write_direct_chunk((self.written,) + (0,) * (block.ndim - 1), block)
        self.written += self.chunk

    def finish(self) -> None:
        if self.held:
            self.tail[self.held:] = 0
            self._put(self.tail)
            self.held = 0


class FlatWriter:
    """Per stored layer one growing [rows, D] dataset, plus offsets, lines and sentences."""

    def __init__(self, h5, spec: OutputSpec, first: int):
        import h5py

        self.f, self.spec, self.first, self.n = h5, spec, first, 0
        st = np.dtype(spec.storage_dtype)
        rows = chunk_rows(spec.dim, st.itemsize)
        self.vectors = []
        for name in spec.stored:
            ds = h5.create_dataset(name, (0, spec.dim), maxshape=(None, spec.dim), dtype=st,
                                   chunks=(rows, spec.dim))
            ds.attrs["dtype"] = spec.dtype_out
            self.vectors.append(ChunkRows(ds, rows))
        self.offsets = h5.create_dataset("offsets", (1,), maxshape=(None,), dtype=np.int64, chunks=(1 << 16,),
                                         data=np.zeros(1, np.int64))
        self.lines = h5.create_dataset("lines", (0,), maxshape=(None,), dtype=np.int64, chunks=(1 << 16,))
        self.text = None if spec.forget_sentences else h5.create_dataset(
            "sentences", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(1 << 12,))
        self.tokens = 0

    def add(self, w: WindowOut) -> None:
        n = len(w.lengths)
        for k, rows in enumerate(self.vectors):
            rows.add(w.data[k])
        ends = self.tokens + np.cumsum(w.lengths, dtype=np.int64)
        self.tokens = int(ends[-1]) if n else self.tokens
        self.offsets.resize(self.n + 1 + n, 0)
        self.offsets[self.n + 1:] = ends
        self.lines.resize(self.n + n, 0)
        self.lines[self.n:] = np.asarray(w.lines, np.int64)
        if self.text is not None:
            self.text.resize(self.n + n, 0)
            self.text[self.n:] = w.text
        self.n += n

    def finish(self) -> None:
        for rows in self.vectors:
            rows.finish()
        self.f.attrs.update(self.spec.root_attrs(self.first, self.n))
        self.f.attrs["total_tokens"] = self.tokens


def open_output(path: str, label: str, spec: OutputSpec, first: int):
    """A new file at `path` for sentences first.. in spec's layout: (diskio.H5Output, its writer).
    label: the output's name in error messages."""
    from .diskio import H5Output

    if spec.layout == "flat":
        out = H5Output(path, label)
        return out, FlatWriter(out.h5, spec, first)
    # sentence keys may hold '/', which makes groups: libhdf5's own datasets; else the packed file
    out = H5Output(path, label, create=spec.use_sentence_keys)
    return out, AllennlpWriter(out, spec, first)
