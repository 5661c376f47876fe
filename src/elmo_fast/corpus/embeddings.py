"""`open_embeddings(path)`: one lazy reader for every output: an allennlp- or flat-layout file, a
shard, a directory of shards or of a run's pieces, or a run's manifest.json.

    with open_embeddings("corpus.hdf5") as emb:
        len(emb)            # sentences
        emb[i]              # numpy: [3, T, D] (--all) or [T, D]; pooled [3, D] or [D]
        emb.sentence(i)     # the sentence text (None where the file does not keep it)
        emb.lengths         # [n] int64 token counts

Sentences are read when asked for, never the whole file. bfloat16 outputs come back as float32
(numpy has no bfloat16); float16 stays float16. A file keyed by sentences (use_sentence_keys) is
indexed by the sentence: emb["Hello world"]. Files made by allennlp itself (no attributes) are read
too, as float32 allennlp layout.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Union

import numpy as np

from .layouts import FORMAT, decode


class EmbeddingsError(ValueError):
    """The path is not an embeddings output, or its parts do not fit together."""


class _File:
    """One hdf5 output file, opened lazily by h5py."""

    def __init__(self, path: str):
        import h5py

        self.path = path
        try:
            self.f = h5py.File(path, "r")
        except OSError as e:
            raise EmbeddingsError(f"cannot read {path} as an hdf5 embeddings file ({e})") from None
        a = self.f.attrs
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
        if self.attrs.get("format") == FORMAT:
            self.layout = self.attrs["layout"]
            self.output_format = self.attrs["output_format"]
            self.dtype = self.attrs["dtype"]
            self.pooled = self.attrs["pool"] == "mean"
            self.first = int(self.attrs["first_sentence"])
            self.n = int(self.attrs["n_sentences"])
            self.stored = json.loads(self.attrs["stored"])
        else:  # allennlp's own file: str(i) keys, float32
            self.layout, self.dtype, self.pooled, self.first, self.stored = (
                "allennlp", "float32", False, 0, [])
            keys = [k for k in self.f.keys() if k != "sentence_to_index"]
            self.n = len(keys)
            first = self.f[keys[0]] if keys else None
            self.output_format = "all" if first is not None and first.ndim == 3 else "top"
        self.keyed = self.layout == "allennlp" and self.n and str(self.first) not in self.f
        if self.layout == "flat":
            self.offsets = self.f["offsets"][()]
            self.vectors = [self.f[name] for name in self.stored]

    def lengths(self) -> np.ndarray:
        if self.layout == "flat":
            return np.diff(self.offsets)
        if self.keyed or self.pooled:
            raise EmbeddingsError(f"{self.path}: an allennlp-layout file keyed by sentences or pooled does "
                                  "not record lengths in order")
        return np.array([self._dataset(i).shape[-2] for i in range(self.n)], np.int64)

    def _dataset(self, i: int):
        return self.f[str(self.first + i)]

    def get(self, i: int) -> np.ndarray:
        if self.layout == "flat":
            if self.pooled:
                rows = [ds[i] for ds in self.vectors]
            else:
                a, b = int(self.offsets[i]), int(self.offsets[i + 1])
                rows = [ds[a:b] for ds in self.vectors]
            out = np.stack(rows) if self.output_format == "all" else rows[0]
            return decode(out, self.dtype)
        if self.keyed:
            raise EmbeddingsError(f"{self.path} is keyed by sentences: index it by sentence (emb['...'])")
        return decode(self._dataset(i)[()], self.dtype)

    def by_key(self, key: str) -> np.ndarray:
        if self.layout != "allennlp":
            raise EmbeddingsError(f"{self.path} is in the flat layout: index it by number")
        return decode(self.f[key][()], self.dtype)

    def sentence(self, i: int) -> Optional[str]:
        if self.layout == "flat":
            if "sentences" not in self.f:
                return None
            s = self.f["sentences"][i]
            return s.decode() if isinstance(s, bytes) else s
        return None

    def close(self) -> None:
        self.f.close()


class Embeddings:
    """Sentences of one or more consecutive output files, as numpy arrays (see the module doc)."""

    def __init__(self, files: List[_File], path: str):
        self.files, self.path = files, path
        first = files[0]
        for f in files[1:]:
            for k in ("layout", "output_format", "dtype", "pooled"):
                if getattr(f, k) != getattr(first, k):
                    raise EmbeddingsError(f"{f.path} has {k} {getattr(f, k)!r} but {first.path} has "
                                          f"{getattr(first, k)!r}")
            if f.attrs.get("model_sha256") != first.attrs.get("model_sha256"):
                raise EmbeddingsError(f"{f.path} was made by another model than {first.path}")
        pos = first.first
        for f in files:
            if f.first != pos:
                raise EmbeddingsError(f"{f.path} starts at sentence {f.first} but the files before it end at "
                                      f"{pos} (missing or overlapping shard)")
            pos += f.n
        self.first_sentence = first.first
        self.starts = np.cumsum([0] + [f.n for f in files])
        self.layout, self.output_format, self.dtype = first.layout, first.output_format, first.dtype
        self.pooled = first.pooled
        self.attrs = dict(first.attrs)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sentence {i} out of range: {self.path} holds {n}")
        i %= n
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.files[k], i - int(self.starts[k])

    def __getitem__(self, i: Union[int, str]) -> np.ndarray:
        if isinstance(i, str):
            for f in self.files:
                if i in f.f:
                    return f.by_key(i)
            raise KeyError(i)
        f, j = self._locate(int(i))
        return f.get(j)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def sentence(self, i: int) -> Optional[str]:
        f, j = self._locate(i)
        return f.sentence(j)

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([f.lengths() for f in self.files])

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _parts_of_directory(path: str) -> List[str]:
    manifest = os.path.join(path, "manifest.json")
    if os.path.exists(manifest):
        return _parts_of_manifest(manifest)
    names = sorted(n for n in os.listdir(path) if n.endswith((".h5", ".hdf5")) and not n.startswith("."))
    if not names:
        raise EmbeddingsError(f"{path} holds no .h5 / .hdf5 embeddings files")
    return [os.path.join(path, n) for n in names]


def _parts_of_manifest(path: str) -> List[str]:
    from .manifest import Manifest

    m = Manifest.load(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not m.pieces:
        raise EmbeddingsError(f"{path} lists no completed pieces")
    return [os.path.join(folder, p["file"]) for p in m.pieces]


def open_embeddings(path: Union[str, "os.PathLike[str]"]) -> Embeddings:
    """An output file, a directory of shard / piece files, or a manifest.json -> Embeddings."""
    path = os.fsdecode(path)
    if not os.path.exists(path):
        raise EmbeddingsError(f"no such embeddings file or directory: {path}")
    if os.path.isdir(path):
        parts = _parts_of_directory(path)
    elif path.endswith(".json"):
        parts = _parts_of_manifest(path)
    else:
        parts = [path]
    files: List[_File] = []
    try:
        for p in parts:
            files.append(_File(p))
        files.sort(key=lambda f: f.first)
        return Embeddings(files, path)
    except BaseException:
        for f in files:
            f.close()
        raise
