"""Whitespace tokenisation of many sentences at once, on their UTF-8 bytes (the corpus job's feeder).

`tokenize(lines)` splits a list of stripped sentences exactly as ``[s.split() for s in lines]``
would, but in one pass over the sentences' joined bytes instead of Python work per token: a
`TokenTable` holds those bytes and, per token, where it starts and how long it is.
`TokenTable.char_ids(positions)` then gives the character ids of a batch of its sentences, equal to
``chars.batch_to_ids`` of their tokens. Both are C++ kernels run without the GIL (csrc/cpu/) where
they are built, else a handful of numpy operations (which drop the GIL inside most of them), so the
feeder leaves the interpreter to the other stages.

The byte-level split equals ``str.split()`` when the only whitespace in the text is ASCII
(``\\t \\n \\v \\f \\r``, ``\\x1c``-``\\x1f``, space): the other Unicode spaces (U+0085, U+00A0,
U+2000..., 23 in all) are searched for first, and text holding one, a line end inside a sentence,
or a lone surrogate (which UTF-8 cannot hold) gets ``None``: the caller splits those sentences in
Python (`Window.tokens`, `chars.batch_to_ids`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..chars import MAX_WORD_LENGTH, fill_ids_from_bytes
from ..reference._cpu_gemm import kernels_or_reference

# str.isspace() characters outside ASCII, which the byte-level split does not know (listed: finding them
# among all code points takes 0.15 s at import; tests/test_corpus_tokens.py checks the list)
WIDE_SPACES = "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def _wide_space_patterns() -> List["re.Pattern[bytes]"]:
    """One pattern per leading UTF-8 bytes (b"\\xe2\\x80[...]", ...): each a fast literal-prefix search
    over the bytes (one character class over the decoded text is ~10x slower)."""
    by_prefix: dict = {}
    for c in WIDE_SPACES:
        b = c.encode("utf-8")
        by_prefix.setdefault(b[:-1], []).append(b[-1])
    return [re.compile(re.escape(p) + b"[" + b"".join(re.escape(bytes([x])) for x in last) + b"]")
            for p, last in by_prefix.items()]


_WIDE_SPACE = _wide_space_patterns()
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[[c for c in range(0x80) if chr(c).isspace()]] = True
_NEWLINE = ord("\n")


@dataclass
class TokenTable:
    """The tokens of consecutive sentences. data: uint8 [bytes] (the sentences' UTF-8, joined by
    newlines); starts, lens: int64 [tokens], in sentence order; counts: int64 [sentences], tokens
    per sentence; offsets: int64 [sentences + 1], the first token of each sentence."""

    data: np.ndarray
    starts: np.ndarray
    lens: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray = None

    def __post_init__(self):
        if self.offsets is None:
            self.offsets = np.zeros(len(self.counts) + 1, dtype=np.int64)
            np.cumsum(self.counts, out=self.offsets[1:])

    def __len__(self) -> int:
        return len(self.counts)

    def sub(self, a: int, b: int) -> "TokenTable":
        """Sentences a .. b - 1 (views, no copy)."""
        ta, tb = int(self.offsets[a]), int(self.offsets[b])
        return TokenTable(self.data, self.starts[ta:tb], self.lens[ta:tb], self.counts[a:b],
                          self.offsets[a:b + 1] - ta)

    def concat(self, other: "TokenTable") -> "TokenTable":
        """This table's sentences, then other's (their bytes copied into one array)."""
        a, b = self._compact(), other._compact()
        return TokenTable(np.concatenate([a.data, b.data]),
                          np.concatenate([a.starts, b.starts + len(a.data)]),
                          np.concatenate([a.lens, b.lens]), np.concatenate([a.counts, b.counts]))

    def _compact(self) -> "TokenTable":
        """The same tokens over only the bytes they use."""
        if not len(self.starts):
            return TokenTable(self.data[:0], self.starts, self.lens, self.counts, self.offsets)
        lo, hi = int(self.starts[0]), int(self.starts[-1] + self.lens[-1])
        return TokenTable(self.data[lo:hi], self.starts - lo, self.lens, self.counts, self.offsets)

    def token_lists(self) -> List[List[str]]:
        """Every sentence's tokens as strings (where Python lists are needed; the job's batches never
        need them)."""
        raw = self.data.tobytes()
        words = [raw[a:a + n].decode("utf-8") for a, n in zip(self.starts.tolist(), self.lens.tolist())]
        ends = self.offsets.tolist()
        return [words[ends[i]:ends[i + 1]] for i in range(len(self.counts))]

    def char_ids(self, positions: Sequence[int], native: Optional[bool] = None) -> torch.Tensor:
        """Character ids of sentences `positions` (a batch, in that order): LongTensor [B, T, 50],
        T the most tokens among them, equal to batch_to_ids of their tokens. Made by our C++ kernel
        (csrc/cpu/char_ids.cpp: one pass over the bytes, without the GIL) where it is built, else by
        `char_ids_ref`; native=True requires the kernel, False takes the reference."""
        pos = np.asarray(positions, dtype=np.int64)
        mod = kernels_or_reference(native)
        if mod is None:
            return self.char_ids_ref(pos)
        n = np.ascontiguousarray(self.counts[pos], dtype=np.int64)          # [B] tokens per sentence
        B, T = len(pos), int(n.max()) if len(pos) else 0
        first = np.ascontiguousarray(self.offsets[pos], dtype=np.int64)     # [B] first token of each
        data = np.ascontiguousarray(self.data, dtype=np.uint8)
        starts = np.ascontiguousarray(self.starts, dtype=np.int64)
        lens = np.ascontiguousarray(self.lens, dtype=np.int64)
        out = torch.empty((B, T, MAX_WORD_LENGTH), dtype=torch.int64)
        mod.char_ids(data.ctypes.data, len(data), starts.ctypes.data, lens.ctypes.data, len(starts),
                     first.ctypes.data, n.ctypes.data, B, T, out.data_ptr())
        return out

    def char_ids_ref(self, positions: Sequence[int]) -> torch.Tensor:
        """`char_ids` in numpy (the kernel's reference and its fallback)."""
        pos = np.asarray(positions, dtype=np.int64)
        n = self.counts[pos]                        # [B] tokens per sentence
        B, T = len(pos), int(n.max()) if len(pos) else 0
        out = np.zeros((B, T, MAX_WORD_LENGTH), dtype=np.int64)
        total = int(n.sum())
        if total:
            before = np.cumsum(n) - n               # tokens of the batch before each sentence
            within = np.arange(total, dtype=np.int64) - np.repeat(before, n)
            tok = np.repeat(self.offsets[pos], n) + within            # token index in the table
            rows = np.repeat(np.arange(B, dtype=np.int64) * T, n) + within  # row in out
            fill_ids_from_bytes(self.data, self.starts[tok], self.lens[tok], out.reshape(-1, MAX_WORD_LENGTH),
                                rows)
        return torch.from_numpy(out)


def tokenize(lines: List[str], native: Optional[bool] = None) -> Optional[TokenTable]:
    """Stripped sentences -> their TokenTable, split as str.split() does; None when the text holds
    whitespace or characters the byte-level split cannot treat exactly (see the module doc). The
    split is our C++ kernel's (csrc/cpu/split_tokens.cpp: one pass, without the GIL) where it is
    built, else numpy's (`split_bytes_ref`); native=True requires the kernel, False takes numpy."""
    if not lines:
        empty = np.zeros(0, dtype=np.int64)
        return TokenTable(np.zeros(0, dtype=np.uint8), empty, empty, empty)
    mod = kernels_or_reference(native)
    joined = "\n".join(lines)
    if joined.isascii():
        raw = joined.encode("ascii")
    else:
        try:
            raw = joined.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (only from Python strings, never from a file)
            return None
        if mod is None and any(p.search(raw) for p in _WIDE_SPACE):   # the kernel looks for them itself
            return None
    data = np.frombuffer(raw, dtype=np.uint8)
    if mod is None:
        split = split_bytes_ref(data, len(lines))
    else:
        cap = len(data) // 2 + 1
        starts, lens = np.empty(cap, np.int64), np.empty(cap, np.int64)
        counts = np.empty(len(lines), np.int64)
        n = mod.split_tokens(data.ctypes.data, len(data), starts.ctypes.data, lens.ctypes.data, cap,
                             counts.ctypes.data, len(lines))
        split = None if n < 0 else (starts[:n].copy(), lens[:n].copy(), counts)
    if split is None:   # a sentence holds a line end (a Python string can): the sentence boundaries
        return None     # cannot be told from the bytes
    return TokenTable(data, *split)


def split_bytes_ref(data: np.ndarray, n_lines: int):
    """The byte-level split in numpy (the kernel's reference and its fallback): data (uint8, the
    sentences joined by line ends) -> (starts, lens, counts) int64, or None when the bytes hold other
    than n_lines - 1 line ends."""
    space = _IS_SPACE.take(data)
    # a token starts at a non-space byte after a space (or at 0) and ends before a space (or at the end)
    word = ~space
    starts = np.flatnonzero(word[1:] & space[:-1]) + 1
    ends = np.flatnonzero(word[:-1] & space[1:]) + 1
    if len(data) and word[0]:
        starts = np.concatenate([[0], starts])
    if len(data) and word[-1]:
        ends = np.concatenate([ends, [len(data)]])
    newlines = np.flatnonzero(data == _NEWLINE)
    if len(newlines) != max(n_lines - 1, 0):
        return None
    # tokens per sentence: how many start before each line end, differenced
    cum = np.searchsorted(starts, newlines)
    counts = np.diff(np.concatenate([[0], cum, [len(starts)]])).astype(np.int64)
    return starts.astype(np.int64), (ends - starts).astype(np.int64), counts


def token_counts(lines: List[str]) -> np.ndarray:
    """int64 [len(lines)]: len(s.split()) of each sentence (the first pass's count)."""
    table = tokenize(lines)
    if table is not None:
        return table.counts
    return np.fromiter((len(s.split()) for s in lines), dtype=np.int64, count=len(lines))


__all__ = ["TokenTable", "tokenize", "token_counts"]
