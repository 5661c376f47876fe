"""allennlp's `ElmoEmbedder` API; the corpus job behind `embed_file` is `elmo_fast.corpus`."""
from __future__ import annotations

import os
from typing import IO, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

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


# ---------------------------------------------------------------------------------------------
# The corpus job lives in elmo_fast.corpus; these names stay importable from here.
from .corpus import (  # noqa: E402
    OUTPUT_FORMATS, InputError, check_output_path, check_sentences, corpus_batches, embed_corpus, read_sentences,
)
from .corpus.reader import check_sentence_keys as _check_sentence_keys  # noqa: E402

__all__ = ["ElmoEmbedder", "resolve_device", "OUTPUT_FORMATS", "InputError", "check_output_path",
           "check_sentences", "corpus_batches", "embed_corpus", "read_sentences"]
