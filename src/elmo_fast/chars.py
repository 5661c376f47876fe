"""Character ids for ELMo, identical to allennlp 0.9's ``batch_to_ids``.

Every token becomes a row of ``MAX_WORD_LENGTH`` (50) ids::

    [begin-of-word, utf-8 bytes (at most 48, cut even in the middle of a character), end-of-word,
     padding, padding, ...]

and then 1 is added to every id, so that 0 is left free to mean "no token here" (the padding
tokens of shorter sentences are rows of zeros).  The tokens ``<S>`` and ``</S>`` are not spelled
out: each is a one-character word made of the begin-of-sentence (256) or end-of-sentence (257)
character.

The implementation is vectorised: the tokens of a whole batch are encoded to one ``bytes`` object
and the [N, 50] array is filled with numpy fancy indexing, so there is no Python work per
character (and, for all-ASCII batches, none per token either beyond ``str.join``).
"""
from __future__ import annotations

from itertools import chain
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "MAX_WORD_LENGTH",
    "BEGINNING_OF_SENTENCE_CHARACTER",
    "END_OF_SENTENCE_CHARACTER",
    "BEGINNING_OF_WORD_CHARACTER",
    "END_OF_WORD_CHARACTER",
    "PADDING_CHARACTER",
    "PADDING_ID",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "BOS_CHARS",
    "EOS_CHARS",
    "tokens_to_char_ids",
    "batch_to_ids",
    "fill_ids_from_bytes",
]

# The character vocabulary of the ELMo char-CNN (ids *before* the +1 shift).
MAX_WORD_LENGTH = 50
BEGINNING_OF_SENTENCE_CHARACTER = 256
END_OF_SENTENCE_CHARACTER = 257
BEGINNING_OF_WORD_CHARACTER = 258
END_OF_WORD_CHARACTER = 259
PADDING_CHARACTER = 260
#: the padding character as stored in the id tensors (+1): the char CNN's pad trick and dedup key on it
PADDING_ID = PADDING_CHARACTER + 1
#: bytes of a token that are kept (the rest of the 50 slots hold begin/end-of-word and padding)
MAX_BYTES = MAX_WORD_LENGTH - 2

BOS_TOKEN = "<S>"
EOS_TOKEN = "</S>"


def _special_row(char: int) -> np.ndarray:
    row = np.full(MAX_WORD_LENGTH, PADDING_CHARACTER, dtype=np.int64)
    row[:3] = (BEGINNING_OF_WORD_CHARACTER, char, END_OF_WORD_CHARACTER)
    row += 1
    row.setflags(write=False)
    return row


#: the 50 ids (already shifted by +1) of the sentence-boundary tokens ``<S>`` and ``</S>``
BOS_CHARS: np.ndarray = _special_row(BEGINNING_OF_SENTENCE_CHARACTER)
EOS_CHARS: np.ndarray = _special_row(END_OF_SENTENCE_CHARACTER)

# The template every row starts from: begin-of-word then padding (+1).
_TEMPLATE = np.full(MAX_WORD_LENGTH, PADDING_CHARACTER + 1, dtype=np.int64)
_TEMPLATE[0] = BEGINNING_OF_WORD_CHARACTER + 1
# What "<S>" / "</S>" would look like if spelled out byte by byte: used to spot them cheaply.
_SPELLED = {tok: (np.frombuffer(tok.encode("ascii"), dtype=np.uint8).astype(np.int64) + 1)
            for tok in (BOS_TOKEN, EOS_TOKEN)}
_SPECIAL_ROWS = {BOS_TOKEN: BOS_CHARS, EOS_TOKEN: EOS_CHARS}


def _describe(obj) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_tokens(tokens: Sequence, where: str) -> None:
    """Raise a TypeError naming the first token that is not a ``str`` (slow path, errors only)."""
    for i, tok in enumerate(tokens):
        if not isinstance(tok, str):
            raise TypeError(f"{where}token {i} is {type(tok).__name__} {_describe(tok)}, expected str "
                            "(tokens must be strings)")


def _encode(tokens: List[str], where: str = ""):
    """(all bytes joined, byte length of each token), with encoding errors ignored like allennlp."""
    try:
        joined = "".join(tokens)
    except TypeError:
        _check_tokens(tokens, where)
        raise
    char_lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    if joined.isascii():   # one byte per character
        return joined.encode("ascii"), char_lengths
    # Byte length of every character from its code point (lone surrogates, which "ignore" drops,
    # count 0), summed per token: no per-token encoding.  Surrogates never pair up across tokens
    # or inside one: Python's utf-8 encoder treats each as an error on its own.
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    width = (1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)).astype(np.int64)
    width[(cps >= 0xD800) & (cps < 0xE000)] = 0
    ends = np.cumsum(width)
    char_ends = np.cumsum(char_lengths)
    byte_ends = np.where(char_ends > 0, ends[np.maximum(char_ends - 1, 0)], 0)
    lengths = np.diff(byte_ends, prepend=0)
    return joined.encode("utf-8", "ignore"), lengths


def fill_ids_from_bytes(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, out: np.ndarray,
                        rows: Optional[np.ndarray] = None, tokens: Optional[List[str]] = None) -> None:
    """Write the (+1-shifted) character ids of tokens given as bytes into the C-contiguous [R, 50]
    array ``out``: token i is ``data[starts[i]:starts[i] + lengths[i]]`` (data: uint8, UTF-8) and
    goes to row ``rows[i]`` (default: row i); other rows are untouched. ``tokens``: the tokens as
    strings, when the bytes were encoded with errors ignored (only then can bytes spell ``<S>``
    without the token being ``<S>``)."""
    n = len(lengths)
    if n == 0:
        return
    if rows is None:
        out[:] = _TEMPLATE
        rows = np.arange(n, dtype=np.int64)
    else:
        out[rows] = _TEMPLATE
    flat_out = out.reshape(-1)
    base = rows * MAX_WORD_LENGTH                  # flat offset of each token's row
    kept = np.minimum(lengths, MAX_BYTES)          # bytes past the 48th are cut, as allennlp does
    n_bytes = int(kept.sum())
    if n_bytes:
        pos = np.arange(n_bytes, dtype=np.int64) - np.repeat(np.cumsum(kept) - kept, kept)
        flat_out[np.repeat(base + 1, kept) + pos] = data[np.repeat(starts, kept) + pos].astype(np.int64) + 1
    flat_out[base + kept + 1] = END_OF_WORD_CHARACTER + 1

    # "<S>" and "</S>" were spelled out above: find them (vectorised on the bytes, then, for encoded
    # strings, an exact string check on the few candidates) and replace their rows.
    for tok, spelled in _SPELLED.items():
        k = len(spelled)
        cand = np.flatnonzero(lengths == k)
        if len(cand) == 0:
            continue
        match = (data[starts[cand][:, None] + np.arange(k)] == spelled - 1).all(axis=1)
        for i in cand[match].tolist():
            if tokens is None or tokens[i] == tok:   # a token whose encoding dropped lone surrogates
                out[rows[i]] = _SPECIAL_ROWS[tok]    # is not special


def _fill_rows(tokens: List[str], out: np.ndarray, row_of_token: Optional[np.ndarray] = None,
               where: str = "") -> None:
    """Write the (+1-shifted) character ids of ``tokens`` into the C-contiguous [R, 50] array
    ``out``: token i goes to row ``row_of_token[i]`` (default: row i); other rows are untouched."""
    if not tokens:
        return
    data, lengths = _encode(tokens, where)
    fill_ids_from_bytes(np.frombuffer(data, dtype=np.uint8), np.cumsum(lengths) - lengths, lengths, out,
                        row_of_token, tokens)


def _as_token_list(tokens, where: str = "") -> List[str]:
    if isinstance(tokens, (str, bytes)):
        raise TypeError(f"{where}expected a list of tokens (str), got a bare {type(tokens).__name__} "
                        f"{_describe(tokens)}; split it into tokens first, e.g. text.split()")
    if isinstance(tokens, list):
        return tokens
    if isinstance(tokens, (tuple, np.ndarray)) or (hasattr(tokens, "__iter__")
                                                    and hasattr(tokens, "__len__")):
        return list(tokens)
    raise TypeError(f"{where}expected a list of tokens (str), got {type(tokens).__name__} "
                    f"{_describe(tokens)}")


def tokens_to_char_ids(tokens: Sequence[str]) -> np.ndarray:
    """Character ids of a flat list of tokens: an int64 array [len(tokens), 50] (ids shifted by +1,
    so no entry is 0)."""
    tokens = _as_token_list(tokens)
    out = np.empty((len(tokens), MAX_WORD_LENGTH), dtype=np.int64)
    _fill_rows(tokens, out)
    return out


def batch_to_ids(batch: Sequence[Sequence[str]]) -> torch.Tensor:
    """Character ids of a batch of tokenized sentences, exactly as allennlp 0.9's ``batch_to_ids``.

    ``batch`` is a list of sentences, each a list of ``str`` tokens.  Returns a LongTensor
    [len(batch), T, 50], T the length of the longest sentence; positions past the end of a sentence
    are all zeros.  (allennlp returns a 2-D [B, 0] tensor when every sentence is empty; this returns
    [B, 0, 50], and [0, 0, 50] for an empty batch, which allennlp cannot handle at all.)
    """
    if isinstance(batch, (str, bytes)):
        raise TypeError(f"batch_to_ids expects a list of sentences, each a list of tokens (str); got a "
                        f"bare {type(batch).__name__} {_describe(batch)}. Wrap and split it, e.g. "
                        "[text.split()]")
    if not hasattr(batch, "__iter__"):
        raise TypeError(f"batch_to_ids expects a list of sentences, each a list of tokens (str); got "
                        f"{type(batch).__name__} {_describe(batch)}")
    sentences = []
    for b, sent in enumerate(batch):
        if isinstance(sent, (str, bytes)):
            raise TypeError(
                f"batch_to_ids: sentence {b} is a bare {type(sent).__name__} {_describe(sent)}, not a list "
                "of tokens; batch_to_ids expects a list of sentences, each a list of tokens (str), e.g. "
                "[s.split() for s in texts]")
        sentences.append(_as_token_list(sent, f"batch_to_ids: sentence {b}: "))

    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    n_sent = len(sentences)
    width = int(lengths.max()) if n_sent else 0
    tokens = list(chain.from_iterable(sentences))
    out = np.zeros((n_sent, width, MAX_WORD_LENGTH), dtype=np.int64)
    if tokens:
        if len(tokens) == n_sent * width:   # no padding: token i is row i
            row_of_token = None
        else:
            starts = np.cumsum(lengths) - lengths
            pos = np.arange(len(tokens), dtype=np.int64) - np.repeat(starts, lengths)
            row_of_token = np.repeat(np.arange(n_sent, dtype=np.int64) * width, lengths) + pos
        try:
            _fill_rows(tokens, out.reshape(-1, MAX_WORD_LENGTH), row_of_token)
        except TypeError:
            for b, sent in enumerate(sentences):   # re-raise naming the sentence and the token
                _check_tokens(sent, f"batch_to_ids: sentence {b}: ")
            raise
    return torch.from_numpy(out)

