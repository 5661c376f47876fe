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
  or "average" otherwise: [total_tokens, D] (pooled: [n, D]), chunks of 1 MB of rows, maxshape
  (None, D); "offsets" [n + 1] int64 (sentence i is rows offsets[i] .. offsets[i+1] - 1; pooled
  files keep the offsets for the lengths); "lines" [n] int64, the input line of each sentence;
  "sentences" [n] vlen str unless forget_sentences. The file is in h5py's default format (libver
  "earliest"); the layers' chunks and their index are written by h5flat.py, not libhdf5, the rest
  by h5py.

bfloat16 has no numpy dtype: it is stored as uint16 holding the upper 16 bits of the float32 bit
pattern (round to nearest even), with attribute dtype="bfloat16" on the file and on each flat
dataset; decode with `(a.astype(np.uint32) << 16).view(np.float32)` (`decode` does).
"""
from __future__ import annotations

import array
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

# imported here, not when the first piece opens: in the job, that import (and without bytecode files,
# compiling these modules: ~0.2 s) would delay the first window's write
from .diskio import H5Output
from .h5direct import DatasetMaker
from .h5flat import ChunkedFile
from .h5pack import PackedFile

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
            self.maker = PackedFile(out.guard, spec.storage_dtype)
        else:
            self.maker = DatasetMaker(out.h5, out.guard, spec.storage_dtype)

    def add(self, w: WindowOut, release: Optional[Callable[[], None]] = None) -> None:
        """Writes window w; release (if given) is called once w.data may be reused: here, before add
        returns (the datasets' writes are waited for)."""
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
        if release is not None:
            release()

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


class FlatWriter:
    """Per stored layer one growing [rows, D] chunked dataset (h5flat.ChunkedFile: each chunk gathered
    from the rows where they lie, no window copy), plus offsets, lines and sentences, written at
    `finish` by h5py. out: the piece's diskio.H5Output (no h5py.File until finish).

    Rows come either a window at a time (`add`: a window buffer, [L_s, rows, D] in input order) or
    batch by batch (`add_batch` then `end_window`: each batch's own output, [B, L_s, T, D]; the window's
    sentences are then written in input order from those outputs). Until finish the writer keeps 24
    bytes a sentence in memory (end row, line, text size: 2.4 MB for a piece of 100 k) and the
    sentences' text in an unnamed temporary file beside the output (gone with the process, whatever
    ends it), so its memory does not grow with the text."""

    def __init__(self, out, spec: OutputSpec, first: int, expect_rows: int = 0):
        self.out, self.spec, self.first, self.n = out, spec, first, 0
        st = np.dtype(spec.storage_dtype)
        self.file = ChunkedFile(out.guard, spec.stored, spec.dim, st, chunk_rows(spec.dim, st.itemsize))
        if expect_rows:   # rows sure to come (the first pass counted them): a disk without room fails now
            self.file.check_room([expect_rows] * len(spec.stored))
        self.ends = array.array("q")          # each sentence's end row
        self.lines = array.array("q")
        self.text_sizes = array.array("q")    # bytes of each sentence's UTF-8 text
        self.text = None                      # the texts, one after the other (a temporary file)
        self.tokens = 0
        self.outputs: Dict[int, np.ndarray] = {}   # the window's batch outputs, by batch number

    def add(self, w: WindowOut, release: Optional[Callable[[], None]] = None) -> None:
        """Writes window w: its rows are handed to the writes-behind thread, which calls release (if
        given) once they are written, so that the caller goes on to the next window meanwhile (waiting
        here left that thread idle for the index work of every window: ~0.1 s of a 0.8 s job);
        without release, add returns once they are written."""
        for k in range(len(self.spec.stored)):
            self.file.append(k, [w.data[k]])
        self._index(w.lines, w.text, w.lengths)
        if release is not None:
            self.file.after(release)
        else:
            self.file.drain()

    def add_batch(self, w, j: int, out: np.ndarray) -> None:
        """Batch j of window w (a batching.Window): its output [B, L_s, T, D] in the stored dtype (row r:
        sentence w.batches[j][r]), kept until `end_window` writes the window (not reused by the model)."""
        self.outputs[j] = out

    def end_window(self, w) -> None:
        """After all of w's batches: every stored layer's rows in input order, gathered from the
        batch outputs (written behind: they stay alive until then), and the window's index."""
        lengths = w.lengths.tolist()
        where = [None] * len(lengths)
        for j, b in enumerate(w.batches):
            for r, pos in enumerate(b):
                where[pos] = (self.outputs[j], r)
        for k in range(len(self.spec.stored)):
            self.file.append(k, [where[pos][0][where[pos][1], k, :n] for pos, n in enumerate(lengths) if n])
        self.outputs = {}
        self._index(w.lines, w.text, w.lengths)

    def _index(self, lines, text, lengths: np.ndarray) -> None:
        ends = np.cumsum(lengths, dtype=np.int64) + self.tokens
        self.ends.frombytes(ends.tobytes())
        self.tokens = int(ends[-1]) if len(ends) else self.tokens
        self.lines.extend(lines)
        if not self.spec.forget_sentences:
            data, sizes = utf8_joined(text)
            self.text_sizes.frombytes(sizes.tobytes())
            try:
                if self.text is None:
                    self.text = tempfile.TemporaryFile(dir=os.path.dirname(self.out.guard.path) or ".")
                self.text.write(data)
            except OSError as e:   # a full disk here is the output's
                self.out.guard.record(e)
                self.out.check()
        self.n += len(lengths)

    def abort(self) -> None:
        """The file is being deleted: stop the writes in flight, whatever they met."""
        self.file.close(raise_error=False)
        if self.text is not None:
            self.text.close()

    def finish(self) -> None:
        import h5py

        self.file.finish()   # every chunk written (or the write error raised) before the file is opened
        self.out.check()
        f = self.out.h5 = self.file.open_h5()
        for name in self.spec.stored:
            f[name].attrs["dtype"] = self.spec.dtype_out
        offsets = np.concatenate([np.zeros(1, np.int64), np.frombuffer(self.ends, np.int64)])
        f.create_dataset("offsets", data=offsets, maxshape=(None,), chunks=(1 << 16,))
        f.create_dataset("lines", data=np.frombuffer(self.lines, np.int64), maxshape=(None,),
                         chunks=(1 << 16,))
        if not self.spec.forget_sentences:
            ds = f.create_dataset("sentences", (self.n,), maxshape=(None,), dtype=h5py.string_dtype(),
                                  chunks=(1 << 12,))
            if self.text is not None:
                self.text.seek(0)
                sizes = self.text_sizes.tolist()
                for a in range(0, self.n, 1 << 12):   # a chunk at a time: bounded memory
                    block = sizes[a:a + (1 << 12)]
                    data = self.text.read(sum(block))
                    cuts = np.concatenate([[0], np.cumsum(block)]).tolist()
                    # h5py stores bytes in a UTF-8 string dataset as they are (valid UTF-8: encoded
                    # from str), without the decode and re-encode of passing str
                    ds[a:a + len(block)] = np.array([data[i:j] for i, j in zip(cuts, cuts[1:])], dtype=object)
                    f.flush()   # the strings' heap out of libhdf5's cache: it would hold them all
                self.text.close()
        f.attrs.update(self.spec.root_attrs(self.first, self.n))
        f.attrs["total_tokens"] = self.tokens


def utf8_joined(text: List[str]):
    """Sentences -> (their UTF-8 one after the other: bytes, each one's size in bytes: int64 [n]), with
    no Python work per sentence beyond its length: the sizes come from the code points (UTF-32)."""
    joined = "".join(text)
    data = joined.encode("utf-8")
    chars = np.fromiter(map(len, text), np.int64, len(text))
    if len(data) == len(joined):     # ASCII: a byte a character
        return data, chars
    cp = np.frombuffer(joined.encode("utf-32-le"), np.uint32)
    width = np.zeros(len(cp) + 1, np.int64)
    np.cumsum(1 + (cp >= 0x80) + (cp >= 0x800).astype(np.int64) + (cp >= 0x10000), out=width[1:])
    ends = np.cumsum(chars)
    return data, width[ends] - width[ends - chars]


def open_output(path: str, label: str, spec: OutputSpec, first: int, expect_rows: int = 0):
    """A new file at `path` for sentences first.. in spec's layout: (diskio.H5Output, its writer).
    label: the output's name in error messages. expect_rows: rows per stored layer the file will get
    at least (flat: a disk without room for them fails at once, `FlatWriter`)."""
    if spec.layout == "flat":
        out = H5Output(path, label, create=False)
        return out, FlatWriter(out, spec, first, expect_rows)
    # sentence keys may hold '/', which makes groups: libhdf5's own datasets; else the packed file
    out = H5Output(path, label, create=spec.use_sentence_keys)
    return out, AllennlpWriter(out, spec, first)
