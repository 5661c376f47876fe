"""Corpus embedding: allennlp's `ElmoEmbedder` API, a sentence-transformers-style `encode()`, plus
length-bucketed batching for speed."""
from __future__ import annotations

import copy
import functools
import json
import os
from typing import IO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._atomic import atomic_path
from .chars import batch_to_ids
from .modules import BiLm, remove_sentence_boundaries
from .weights import load_model

DEVICE_TYPES = ("cpu", "cuda")
OUTPUT_VALUES = ("token_embeddings", "sentence_embedding")
LAYER_CHOICES = ("all", "top", "average")


def resolve_device(cuda_device: int = -1, device: Optional[str] = None) -> torch.device:
    """allennlp's cuda_device (-1 = CPU) or a torch device string; a clear error for a missing GPU
    (RuntimeError) or a device type elmo_fast does not run on (ValueError: mps, xpu, meta, ...)."""
    dev = torch.device(device) if device is not None else (
        torch.device("cuda", cuda_device) if cuda_device >= 0 else torch.device("cpu"))
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"device {str(dev)!r} is not supported: elmo_fast runs on cpu or cuda (cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {dev} was asked for but this machine has no CUDA device "
                               "(use cuda_device=-1 / --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {dev} was asked for but only {torch.cuda.device_count()} CUDA "
                               "device(s) exist")
    return dev


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """ValueError for a dtype the model cannot or should not run in on `device`: bf16 / fp16 on the
    CPU run the reference path ~26x slower than fp32 (no fast low-precision CPU kernels)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (torch.float32, torch.bfloat16), "
                         f"got {dtype!r}")
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).replace("torch.", "")
        raise ValueError(f"dtype {name} is refused on the CPU: there it runs about 26x slower than float32 "
                         "(no fast low-precision CPU kernels); use float32 (--dtype fp32), or bf16 on a CUDA "
                         "device")


def _positive_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _stateless(bilm: BiLm) -> BiLm:
    """`bilm` itself when stateless, else a shallow copy with stateful=False: the same parameters and
    buffers (shared, so moving or training the original moves this one), starting every sentence
    from the start state and never reading or updating the original's carried state, so it needs
    no lock and leaves the state as it was."""
    if not bilm.stateful:
        return bilm
    view = copy.copy(bilm)
    view.stateful = False
    return view


def _tokens(sentence, position: int) -> List[str]:
    """A sentence as tokens: a string is split on whitespace, a sequence of strings taken as is."""
    if isinstance(sentence, str):
        return sentence.split()
    tokens = list(sentence)
    if not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"sentence {position} must be a string or a list of token strings, got {sentence!r}")
    return tokens


class ElmoEmbedder:
    """Drop-in for allennlp's `ElmoEmbedder`: numpy arrays [3, T, 2P] per sentence, plus `encode()`.

    options_file / weight_file: paths, URLs, or (model=) a registry name ('tiny', 'small', 'medium',
    'original', 'original-5.5B', 'pubmed'), a model folder or zip; both None means the original
    model, as in allennlp.
    stateful=True reproduces allennlp (each batch row continues from the previous batch's state);
    stateful=False makes every sentence's output independent of its batch and of what came before.
    Concurrent calls on a stateful embedder are serialised (each continues the state the previous
    left); stateless ones run concurrently.
    warm_start=True starts sentences from a fixed warmed-up state instead of zeros (see BiLm).
    dtype=torch.bfloat16 runs the fast path in bf16 (fp32 accumulation) on a GPU; it is refused on
    the CPU, where it would be much slower than fp32.

    allennlp's attributes keep their meaning: `elmo_bilm` (the BiLm, allennlp's _ElmoBiLm, with
    `_elmo_lstm._states` and `get_output_dim()`), `cuda_device` (-1 for the CPU; setting it moves the
    model), and the embedder pickles with its state (as flair's ELMoEmbeddings saves it).
    """

    def __init__(self, options_file: Optional[str] = None, weight_file: Optional[str] = None,
                 cuda_device: int = -1, *, model: Optional[str] = None, stateful: bool = True,
                 warm_start: bool = False, device: Optional[str] = None, dtype: torch.dtype = torch.float32,
                 progress: bool = True):
        from .download import resolve_model

        dev = resolve_device(cuda_device, device)  # device and dtype are checked before any download
        check_dtype(dtype, dev)
        if model is None and options_file is None and weight_file is None:
            model = "original"
        options_path, weights_path = resolve_model(model, options_file=options_file,
                                                   weight_file=weight_file, progress=progress)
        self.elmo_bilm = BiLm(weights=load_model(options_path, weights_path), stateful=stateful,
                              warm_start=warm_start)
        self.elmo_bilm.eval().to(device=dev, dtype=dtype)

    # ---- where the model is: read from its parameters, so moving elmo_bilm moves the inputs too
    @property
    def device(self) -> torch.device:
        return next(self.elmo_bilm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.elmo_bilm.parameters()).dtype

    @property
    def cuda_device(self) -> int:
        """allennlp's device number: the GPU index the model is on, -1 for the CPU."""
        dev = self.device
        if dev.type != "cuda":
            return -1
        return dev.index if dev.index is not None else torch.cuda.current_device()

    @cuda_device.setter
    def cuda_device(self, value: int) -> None:
        self.to(resolve_device(cuda_device=int(value)))

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "ElmoEmbedder":
        """Moves (and/or converts) the model; device and dtype are checked as in the constructor."""
        dev = resolve_device(device=str(device)) if device is not None else self.device
        dtype = dtype or self.dtype
        check_dtype(dtype, dev)
        self.elmo_bilm.to(device=dev, dtype=dtype)
        return self

    def __getattr__(self, name: str):
        # only reached for names not found normally: allennlp's `indexer` has a named replacement
        if name == "indexer":
            raise AttributeError("allennlp's ElmoEmbedder.indexer (ELMoTokenCharactersIndexer) does not "
                                 "exist in elmo_fast: use elmo_fast.batch_to_ids(sentences) for character ids")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def output_dim(self) -> int:
        return self.elmo_bilm.get_output_dim()

    def reset_states(self) -> None:
        self.elmo_bilm.reset_states()

    def _run(self, bilm: BiLm, batch: List[List[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        ids = batch_to_ids(batch).to(self.device)
        with torch.inference_mode():
            out = bilm(ids)
        layers = [remove_sentence_boundaries(a, out["mask"]) for a in out["activations"]]
        return torch.stack([a for a, _ in layers], 1), layers[0][1]

    def batch_to_embeddings(self, batch: List[List[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokenised sentences -> (activations [B, 3, T, 2P], mask [B, T])."""
        return self._run(self.elmo_bilm, batch)

    def _empty(self) -> np.ndarray:
        return np.zeros((self.elmo_bilm.num_layers, 0, self.output_dim), dtype=np.float32)

    def embed_batch(self, batch: List[List[str]]) -> List[np.ndarray]:
        """Tokenised sentences -> one float32 array [3, T_i, 2P] per sentence."""
        if not batch:
            return []
        if batch == [[]]:
            return [self._empty()]
        embeddings, mask = self.batch_to_embeddings(batch)
        lengths = mask.sum(1).tolist()
        embeddings = embeddings.float().cpu().numpy()
        return [embeddings[i, :, :n] if n else self._empty() for i, n in enumerate(lengths)]

    def embed_sentence(self, sentence: List[str]) -> np.ndarray:
        """One tokenised sentence -> [3, T, 2P]."""
        return self.embed_batch([sentence])[0]

    def embed_sentences(self, sentences: Iterable[List[str]], batch_size: int = 64) -> Iterator[np.ndarray]:
        """Sentences in input order, computed batch_size at a time (in input order, as allennlp)."""
        _positive_batch_size(batch_size)  # checked now, not when the generator is first advanced
        return self._embed_sentences(sentences, batch_size)

    def _embed_sentences(self, sentences: Iterable[List[str]], batch_size: int) -> Iterator[np.ndarray]:
        batch: List[List[str]] = []
        for sentence in sentences:
            batch.append(sentence)
            if len(batch) == batch_size:
                yield from self.embed_batch(batch)
                batch = []
        if batch:
            yield from self.embed_batch(batch)

    def embed_file(self, input_file: Union[IO, str, "os.PathLike[str]"], output_file_path: str,
                   output_format: str = "all", batch_size: int = 64, forget_sentences: bool = False,
                   use_sentence_keys: bool = False, *, progress: bool = True) -> None:
        """allennlp's `embed_file`: one whitespace-tokenised sentence per line -> an hdf5 file.

        input_file: an open text (or binary) file, or a path. The output holds one float32 dataset
        per sentence, keyed by its line index (str) or, with use_sentence_keys, by the sentence
        itself: [3, T, D] for output_format "all", [T, D] for "top" and "average"; plus, unless
        forget_sentences or use_sentence_keys, "sentence_to_index" (JSON {sentence: index}).

        Batching: a stateful embedder (allennlp's behaviour) takes batches in input order, so the
        numbers reproduce `allennlp elmo`; a stateless one groups sentences of similar length (the
        output does not depend on batching, and padding is minimal). The input is checked before any
        work (empty lines, empty file, bytes that are not UTF-8); the output is written to a
        temporary file beside output_file_path and renamed over it only when complete. See
        `embed_corpus`. Unlike allennlp, an input file object passed in is not closed.
        """
        embed_corpus(self, read_sentences(input_file), output_file_path, output_format=output_format,
                     batch_size=batch_size, forget_sentences=forget_sentences,
                     use_sentence_keys=use_sentence_keys, progress=progress)

    # ---- encode (sentence-transformers style)
    def _layer_weights(self, layers) -> Optional[torch.Tensor]:
        """None for 'all', else the weights [L] of the layer mix."""
        L = self.elmo_bilm.num_layers
        if isinstance(layers, str):
            if layers not in LAYER_CHOICES:
                raise ValueError(f"layers must be one of {', '.join(LAYER_CHOICES)}, a layer index or {L} "
                                 f"weights, got {layers!r}")
            if layers == "all":
                return None
            w = torch.zeros(L)
            if layers == "top":
                w[-1] = 1.0
            else:
                w[:] = 1.0 / L
            return w
        if isinstance(layers, int) and not isinstance(layers, bool):
            if not -L <= layers < L:
                raise ValueError(f"layer index {layers} is out of range for a model with {L} layers")
            w = torch.zeros(L)
            w[layers] = 1.0
            return w
        w = torch.as_tensor(layers, dtype=torch.float32).reshape(-1)
        if w.numel() != L or not torch.isfinite(w).all():
            raise ValueError(f"layers as weights must be {L} finite numbers (one per layer), got {layers!r}")
        return w

    def encode(self, sentences, batch_size: int = 32, output_value: str = "token_embeddings",
               layers="all", convert_to: str = "numpy", show_progress_bar: Optional[bool] = None,
               device=None, dtype: Optional[torch.dtype] = None, *, stateful: bool = False):
        """Sentences -> vectors, in input order (sentence-transformers' `encode`).

        sentences: one string, or a list of strings (split on whitespace) and/or token lists.
        output_value: "token_embeddings" -> one array per sentence, [T_i, D] ([L, T_i, D] for
        layers="all"); "sentence_embedding" -> the mean over each sentence's real tokens of the chosen
        layer mix, stacked: [N, D] ([N, L, D] for "all"; a sentence without tokens gets zeros).
        layers: "all" (L = n_layers + 1 layers kept apart), "top", "average", a layer index, or L
        weights (used as given: no softmax, no scale). convert_to: "numpy" (float32 arrays) or
        "torch" (float32 tensors on the model's device). A single string in gives a single result.
        show_progress_bar: None shows it on a terminal only. device / dtype: move the model first
        (kept afterwards), checked as in the constructor.

        Stateless by default, whatever the embedder's own mode: the input is sorted by length
        (longest first) so batches pad little, and a stateful run would make each sentence's numbers
        depend on which sentences the sorting put before it. So every sentence starts from the start
        state (zeros, or the warm-up state with warm_start) and the carried state is neither read
        nor changed: results do not depend on batch_size, order or the other sentences.
        stateful=True (a stateful embedder only) instead keeps input order and continues the
        carried state, as embed_sentences does.
        """
        from tqdm.auto import tqdm

        single = isinstance(sentences, str)
        tokens = [_tokens(s, i) for i, s in enumerate([sentences] if single else sentences)]
        _positive_batch_size(batch_size)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {', '.join(OUTPUT_VALUES)}, got {output_value!r}")
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        if stateful and not self.elmo_bilm.stateful:
            raise ValueError("encode(stateful=True) needs a stateful embedder (ElmoEmbedder(stateful=True))")
        weights = self._layer_weights(layers)
        if device is not None or dtype is not None:
            self.to(device, dtype)
        bilm = self.elmo_bilm if stateful else _stateless(self.elmo_bilm)
        order = list(range(len(tokens)))
        if not stateful:  # longest first; equal lengths keep input order
            order.sort(key=lambda i: -len(tokens[i]))
        pooled = output_value == "sentence_embedding"
        results: List[Optional[torch.Tensor]] = [None] * len(tokens)
        w = None if weights is None else weights.to(self.device).view(1, -1, 1, 1)
        disable = None if show_progress_bar is None else not show_progress_bar  # None: on a terminal only
        with tqdm(total=len(tokens), unit="sent", desc="elmo encode", disable=disable) as bar:
            for k in range(0, len(order), batch_size):
                idx = order[k:k + batch_size]
                acts, mask = self._run(bilm, [tokens[i] for i in idx])  # [B, L, T, D], [B, T]
                acts = acts.float()
                mixed = acts if w is None else (acts * w).sum(1)  # [B, L, T, D] or [B, T, D]
                if pooled:
                    m = mask.to(acts.dtype)
                    count = m.sum(1).clamp(min=1.0)
                    if w is None:
                        vecs = (mixed * m[:, None, :, None]).sum(2) / count[:, None, None]
                    else:
                        vecs = (mixed * m[:, :, None]).sum(1) / count[:, None]
                    for j, i in enumerate(idx):
                        results[i] = vecs[j]
                else:
                    for j, (i, n) in enumerate(zip(idx, mask.sum(1).tolist())):
                        results[i] = mixed[j, ..., :n, :]
                bar.update(len(idx))
        if not tokens:
            D, L = self.output_dim, self.elmo_bilm.num_layers
            empty = torch.zeros((0, L, D) if weights is None else (0, D))
            return empty.numpy() if convert_to == "numpy" and pooled else empty if pooled else []
        if pooled:
            out = torch.stack(results)
            out = out.cpu().numpy() if convert_to == "numpy" else out
            return out[0] if single else out
        outs = [r.cpu().numpy() for r in results] if convert_to == "numpy" else results
        return outs[0] if single else outs


@functools.lru_cache(maxsize=2)
def _cached_embedder(options: str, weights: str, device: str, dtype: torch.dtype,
                     warm_start: bool) -> ElmoEmbedder:
    return ElmoEmbedder(options, weights, device=device, dtype=dtype, stateful=False, warm_start=warm_start)


def encode(sentences, model: str, batch_size: int = 32, output_value: str = "token_embeddings",
           layers="all", convert_to: str = "numpy", show_progress_bar: Optional[bool] = None,
           device=None, dtype: Optional[torch.dtype] = None, *, warm_start: bool = False):
    """`ElmoEmbedder.encode` with the model named here: a registry name ('tiny', 'small', 'original',
    ...), a folder, a zip or a URL. device defaults to cuda when there is one, else cpu; dtype to
    float32. Always stateless (see ElmoEmbedder.encode). The loaded model is kept for the next call
    (the last two models; `elmo_fast.encode.cache_clear()` drops them)."""
    from .download import resolve_model

    dev = resolve_device(device=str(device) if device is not None else
                         ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or torch.float32
    check_dtype(dtype, dev)
    options, weights = resolve_model(model, progress=show_progress_bar is not False)
    embedder = _cached_embedder(options, weights, str(dev), dtype, warm_start)
    return embedder.encode(sentences, batch_size=batch_size, output_value=output_value, layers=layers,
                           convert_to=convert_to, show_progress_bar=show_progress_bar)


encode.cache_clear = _cached_embedder.cache_clear  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Corpus -> hdf5 (allennlp's `embed_file` / `allennlp elmo`), shared by the method and the CLI.

OUTPUT_FORMATS = ("all", "top", "average")
_MAX_LISTED = 20


class InputError(ValueError):
    """The input corpus cannot be embedded: missing or unreadable file, no sentences, empty lines,
    bytes that are not UTF-8, or (with sentence keys) sentences that cannot all be distinct keys."""


def _split_lines(text: str) -> List[str]:
    """Lines as Python's universal-newline text mode yields them (\\n, \\r\\n and \\r end a line)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _listed(indexes: List[int]) -> str:
    if len(indexes) <= _MAX_LISTED:
        return str(indexes)
    return str(indexes[:_MAX_LISTED])[:-1] + f", ...] ({len(indexes)} in all)"


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        prefix = data[: e.start].decode("utf-8", errors="replace")
        line = prefix.count("\n") + prefix.count("\r") - prefix.count("\r\n") + 1
        raise InputError(f"{name}: line {line} (index {line - 1}) is not valid UTF-8 (byte "
                         f"0x{data[e.start]:02x} at offset {e.start}); the input file must be UTF-8 "
                         "text") from None
    # A byte-order mark is an encoding artefact, not part of the first word.
    return text[1:] if text.startswith("\ufeff") else text


def check_sentences(sentences: Sequence[str], name: str = "input") -> None:
    """allennlp's checks on stripped lines: at least one, and none empty."""
    if not sentences:
        raise InputError(f"{name} has no sentences (the file is empty); expected one "
                         "whitespace-tokenised sentence per line")
    blank = [i for i, s in enumerate(sentences) if not s.strip()]
    if blank:
        raise InputError(f"{name} contains empty lines at indexes {_listed(blank)} (line numbers "
                         f"{_listed([i + 1 for i in blank])}). Please remove them.")


def read_sentences(input_file: Union[IO, str, "os.PathLike[str]"]) -> List[str]:
    """The stripped lines of a corpus (one whitespace-tokenised sentence per line), checked.

    input_file: a path, or an open text or binary file (read to its end, not closed). Raises
    InputError, naming the file and the offending lines, for a missing or unreadable file, an empty
    file, empty lines, or bytes that are not UTF-8. A leading byte-order mark is dropped.
    """
    if isinstance(input_file, (str, bytes, os.PathLike)):
        path = os.fsdecode(input_file)
        name = path
        if not os.path.exists(path):
            raise InputError(f"input file not found: {path}")
        if os.path.isdir(path):
            raise InputError(f"input file {path} is a directory")
        try:
            with open(path, "rb") as f:
                text = _decode(f.read(), name)
        except OSError as e:
            raise InputError(f"cannot read input file {path}: {e.strerror or e}") from None
    else:
        name = str(getattr(input_file, "name", "input"))
        try:
            data = input_file.read()
        except UnicodeDecodeError:
            # A text stream cannot say which line; re-read the file's bytes when it has a path.
            if isinstance(getattr(input_file, "name", None), str) and os.path.isfile(input_file.name):
                with open(input_file.name, "rb") as f:
                    _decode(f.read(), name)
            raise InputError(f"{name} is not valid UTF-8; the input file must be UTF-8 text") from None
        text = _decode(data, name) if isinstance(data, (bytes, bytearray)) else data
        if text.startswith("\ufeff"):
            text = text[1:]
    sentences = [line.strip() for line in _split_lines(text)]
    check_sentences(sentences, name)
    return sentences


def _check_sentence_keys(sentences: Sequence[str]) -> None:
    """With sentences as hdf5 keys, every sentence must name a distinct dataset ('/' nests groups)."""
    first: Dict[str, int] = {}
    for i, s in enumerate(sentences):
        parts = [p for p in s.split("/") if p]
        if not parts or "." in parts:
            raise InputError(f"sentence at index {i} ({s!r}) cannot be an hdf5 key (it is made of '/' "
                             "and '.'); do not pass --use-sentence-keys / use_sentence_keys")
        key = "/".join(parts)
        if key in first:
            raise InputError(f"duplicate sentence at indexes {first[key]} and {i} ({s!r}): sentence keys "
                             "must be unique; to encode duplicate sentences, do not pass "
                             "--use-sentence-keys / use_sentence_keys (line indexes are then the keys)")
        first[key] = i
    for key, i in first.items():
        parts = key.split("/")
        for k in range(1, len(parts)):
            prefix = "/".join(parts[:k])
            if prefix in first:
                raise InputError(f"sentences at indexes {first[prefix]} and {i} cannot both be hdf5 keys: "
                                 f"{key!r} would nest inside {prefix!r} ('/' separates hdf5 groups); do "
                                 "not pass --use-sentence-keys / use_sentence_keys")


def check_output_path(output_file_path: Union[str, "os.PathLike[str]"]) -> str:
    """The absolute output path, after checking that its folder exists and it is not a folder."""
    out = os.path.abspath(os.fsdecode(output_file_path))
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise InputError(f"output directory does not exist: {folder}")
    if os.path.isdir(out):
        raise InputError(f"output path {out} is a directory")
    return out


def corpus_batches(lengths: Sequence[int], batch_size: int, by_length: bool) -> List[List[int]]:
    """Sentence indexes per batch: input order, or (by_length) longest first, so each batch pads little.
    Equal lengths keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if by_length else list(range(len(lengths)))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def embed_corpus(embedder: "ElmoEmbedder", sentences: Sequence[str], output_file_path: Union[str, "os.PathLike[str]"],
                 output_format: str = "all", batch_size: int = 64, forget_sentences: bool = False,
                 use_sentence_keys: bool = False, progress: bool = True,
                 by_length: Optional[bool] = None) -> None:
    """Embeds whitespace-tokenised sentences into an hdf5 file in allennlp's layout.

    Datasets (float32): key str(i) for sentence i (or the sentence itself with use_sentence_keys),
    [3, T, D] for "all", [T, D] for "top" (the last layer) and "average" (mean of the layers); and,
    unless forget_sentences or use_sentence_keys, "sentence_to_index": shape (1,), a vlen str holding
    JSON {sentence: "i"} (a repeated sentence maps to its last index, as in allennlp).

    Batching (by_length=None: decided by the embedder's `elmo_bilm.stateful`):
      * stateful (allennlp's mode): batches of batch_size in input order, exactly as `allennlp elmo`
        forms them, so row b of a batch continues the state of row b of the previous one and the
        numbers reproduce allennlp's;
      * stateless: sentences sorted by token count (longest first) and cut into batches of
        batch_size, so batches pad little; each output depends only on its sentence, and the keys
        still follow the input.
    Streaming: each batch's datasets are written as it comes, so memory holds one batch. Atomic: the
    file is written under a temporary name beside output_file_path and renamed over it only once
    complete; on any error or interrupt the temporary file is removed and an existing file at
    output_file_path is left untouched. Input problems (InputError) and a missing output folder are
    reported before any model work.
    """
    import h5py
    from tqdm.auto import tqdm

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    sentences = [s.strip() for s in sentences]
    check_sentences(sentences)
    if use_sentence_keys:
        _check_sentence_keys(sentences)
    out = check_output_path(output_file_path)
    if by_length is None:
        by_length = not getattr(getattr(embedder, "elmo_bilm", None), "stateful", True)
    tokens = [s.split() for s in sentences]
    batches = corpus_batches([len(t) for t in tokens], batch_size, by_length)

    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as fout, \
                tqdm(total=len(sentences), unit="sent", desc="elmo", disable=not progress) as bar:
            for idx in batches:
                embeddings = embedder.embed_batch([tokens[i] for i in idx])
                for i, emb in zip(idx, embeddings):
                    if output_format == "top":
                        emb = emb[-1]
                    elif output_format == "average":
                        emb = np.average(emb, axis=0)
                    key = sentences[i] if use_sentence_keys else str(i)
                    fout.create_dataset(key, emb.shape, dtype="float32", data=emb)
                bar.update(len(idx))
            if not forget_sentences and not use_sentence_keys:
                index = {s: str(i) for i, s in enumerate(sentences)}
                ds = fout.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
                ds[0] = json.dumps(index)
