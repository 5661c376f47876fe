"""Corpus embedding: allennlp's `ElmoEmbedder` API, plus length-bucketed batching for speed."""
from __future__ import annotations

import json
import os
from typing import IO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._atomic import atomic_path
from .chars import batch_to_ids
from .modules import BiLm, remove_sentence_boundaries
from .weights import load_model


def resolve_device(cuda_device: int = -1, device: Optional[str] = None) -> torch.device:
    """allennlp's cuda_device (-1 = CPU) or a torch device string; a clear error for a missing GPU."""
    dev = torch.device(device) if device is not None else (
        torch.device("cuda", cuda_device) if cuda_device >= 0 else torch.device("cpu"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {dev} was asked for but this machine has no CUDA device "
                               "(use cuda_device=-1 / --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {dev} was asked for but only {torch.cuda.device_count()} CUDA "
                               "device(s) exist")
    return dev


class ElmoEmbedder:
    """Drop-in for allennlp's `ElmoEmbedder`: numpy arrays [3, T, 2P] per sentence.

    options_file / weight_file: paths, URLs, or (model=) a registry name ('small', 'medium',
    'original', 'original-5.5B'); both None means the original model, as in allennlp.
    stateful=True reproduces allennlp (each batch row continues from the previous batch's state);
    stateful=False makes every sentence's output independent of its batch and of what came before.
    warm_start=True starts sentences from a fixed warmed-up state instead of zeros (see BiLm).
    dtype=torch.bfloat16 runs the fast path in bf16 (fp32 accumulation) on a GPU.
    """

    def __init__(self, options_file: Optional[str] = None, weight_file: Optional[str] = None,
                 cuda_device: int = -1, *, model: Optional[str] = None, stateful: bool = True,
                 warm_start: bool = False, device: Optional[str] = None, dtype: torch.dtype = torch.float32,
                 progress: bool = True):
        from .download import resolve_model

        if model is None and options_file is None and weight_file is None:
            model = "original"
        options_path, weights_path = resolve_model(model, options_file=options_file,
                                                   weight_file=weight_file, progress=progress)
        self.device = resolve_device(cuda_device, device)
        self.cuda_device = self.device.index if self.device.type == "cuda" else -1
        self.dtype = dtype
        self.elmo_bilm = BiLm(weights=load_model(options_path, weights_path), stateful=stateful,
                              warm_start=warm_start)
        self.elmo_bilm.eval().to(device=self.device, dtype=dtype)

    @property
    def output_dim(self) -> int:
        return self.elmo_bilm.get_output_dim()

    def reset_states(self) -> None:
        self.elmo_bilm.reset_states()

    def batch_to_embeddings(self, batch: List[List[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokenised sentences -> (activations [B, 3, T, 2P], mask [B, T])."""
        ids = batch_to_ids(batch).to(self.device)
        with torch.inference_mode():
            out = self.elmo_bilm(ids)
        layers = [remove_sentence_boundaries(a, out["mask"]) for a in out["activations"]]
        return torch.stack([a for a, _ in layers], 1), layers[0][1]

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
