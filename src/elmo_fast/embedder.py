"""allennlp's `ElmoEmbedder` API and a sentence-transformers-style `encode()`; the corpus job behind
`embed_file` is `elmo_fast.corpus`."""
from __future__ import annotations

import copy
import functools
import os
from typing import IO, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

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
                                 "exist in elmo_fast: use elmo_fast.batch_to_ids(sentences) "
                                 "for character ids")
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
                   use_sentence_keys: bool = False, *, progress: bool = True, **options) -> None:
        """allennlp's `embed_file`: one whitespace-tokenised sentence per line -> an hdf5 file.

        input_file: an open text (or binary) file, or a path (.gz too). The output holds one float32
        dataset per sentence, keyed by its line index (str) or, with use_sentence_keys, by the sentence
        itself: [3, T, D] for output_format "all", [T, D] for "top" and "average"; plus, unless
        forget_sentences or use_sentence_keys, "sentence_to_index" (JSON {sentence: index}).

        Batching: a stateful embedder (allennlp's behaviour) takes batches in input order, so the
        numbers reproduce `allennlp elmo`; a stateless one groups sentences of similar length inside
        look-ahead windows (the output does not depend on batching, and padding is minimal). The
        input is checked before any work (empty lines, empty file, bytes that are not UTF-8), then
        streamed; the output appears only when complete. options: those of
        `elmo_fast.corpus.embed_corpus` (layout, dtype_out, pool, batch_tokens, resume, ...). Unlike
        allennlp, an input file object passed in is not closed.
        """
        from .corpus import embed_corpus as _embed

        _embed(self, input_file, output_file_path, output_format=output_format, batch_size=batch_size,
               forget_sentences=forget_sentences, use_sentence_keys=use_sentence_keys, progress=progress,
               batching="input" if self.elmo_bilm.stateful else "bucket", **options)

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
# The corpus job lives in elmo_fast.corpus; these names stay importable from here.
from .corpus import (  # noqa: E402
    OUTPUT_FORMATS, InputError, check_output_path, check_sentences, corpus_batches, embed_corpus,
    read_sentences,
)

__all__ = ["ElmoEmbedder", "resolve_device", "OUTPUT_FORMATS", "InputError", "check_output_path",
           "check_sentences", "corpus_batches", "embed_corpus", "read_sentences"]
