"""Batching: sentences -> batches, with a sentence count and a token budget.

Two modes, passed in explicitly by the caller:
  * "input" (stateful mode): batches in input order, as `allennlp elmo` forms them, so row b of a
    batch continues the state of row b of the previous one. A window is one batch.
  * "bucket" (stateless / warm-start): the stream is cut into look-ahead windows of `window`
    sentences, aligned to the global sentence index (window k holds sentences k*window ..
    (k+1)*window - 1). Inside a window sentences are sorted by token count, longest first (ties in
    input order), and cut into batches, so batches pad little. Batches depend only on the window's
    contents, so a resumed run or a shard that starts at a window boundary forms the same batches
    as one uninterrupted run and writes the same bytes.

Limits: at most `batch_size` sentences, and (batch_tokens) at most batch_tokens padded tokens, i.e.
rows x longest sentence; a sentence longer than the budget gets a batch of its own. Sentences with
no tokens (empty lines kept) are in the window but in no batch: they need no model work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

MODES = ("input", "bucket")


@dataclass
class Window:
    """Consecutive sentences start .. start + len - 1 and the batches that cover their tokens.

    lines: the input line of each sentence; text: the stripped lines; lengths: token counts;
    batches: positions inside the window (not global indexes), each batch one model call."""

    start: int
    lines: List[int]
    text: List[str]
    tokens: List[List[str]]
    lengths: np.ndarray
    batches: List[List[int]] = field(default_factory=list)
    offsets: np.ndarray = None  # [len + 1] token offsets of the sentences inside the window

    def __post_init__(self):
        if self.offsets is None:
            self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.text)

    @property
    def stop(self) -> int:
        return self.start + len(self.text)


def cut(order: Sequence[int], lengths: Sequence[int], batch_size: int,
        batch_tokens: Optional[int]) -> List[List[int]]:
    """Consecutive runs of `order` (positions) within both limits; empty sentences are left out."""
    batches: List[List[int]] = []
    cur: List[int] = []
    longest = 0
    for i in order:
        n = int(lengths[i])
        if n == 0:
            continue
        wide = max(longest, n)
        if cur and (len(cur) == batch_size
                    or (batch_tokens is not None and (len(cur) + 1) * wide > batch_tokens)):
            batches.append(cur)
            cur, wide = [], n
        cur.append(i)
        longest = wide
    if cur:
        batches.append(cur)
    return batches


def check_limits(batch_size: int, batch_tokens: Optional[int], window: int) -> None:
    for name, v in (("batch_size", batch_size), ("window", window)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if batch_tokens is not None and (isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int)
                                     or batch_tokens < 1):
        raise ValueError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")


def windows(items: Iterable[Tuple[int, int, str]], mode: str, batch_size: int, batch_tokens: Optional[int],
            window: int) -> Iterator[Window]:
    """(sentence index, line, text) in order -> Windows with their batches (see the module doc).

    In "bucket" mode the first window may be partial when `items` starts inside one (a shard or a
    resumed run always starts at a boundary, so that does not happen there)."""
    if mode not in MODES:
        raise ValueError(f"batching mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_limits(batch_size, batch_tokens, window)
    buf: Tuple[List[int], List[int], List[str], List[List[str]]] = ([], [], [], [])
    real, longest = 0, 0  # input mode: sentences with tokens in the open batch, and the longest
    for k, line, text in items:
        toks = text.split()
        n = len(toks)
        if buf[0]:
            if mode == "bucket":
                full = k % window == 0
            else:
                full = n > 0 and (real == batch_size or (batch_tokens is not None and real > 0
                                                          and (real + 1) * max(longest, n) > batch_tokens))
            if full:
                yield _window(buf, mode, batch_size, batch_tokens)
                buf, real, longest = ([], [], [], []), 0, 0
        buf[0].append(k)
        buf[1].append(line)
        buf[2].append(text)
        buf[3].append(toks)
        real, longest = real + (n > 0), max(longest, n)
    if buf[0]:
        yield _window(buf, mode, batch_size, batch_tokens)


def _window(buf, mode: str, batch_size: int, batch_tokens: Optional[int]) -> Window:
    idx, lines, text, toks = buf
    lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
    w = Window(idx[0], lines, text, toks, lengths)
    if mode == "bucket":
        order = sorted(range(len(toks)), key=lambda i: -lengths[i])  # stable: ties keep input order
        w.batches = cut(order, lengths, batch_size, batch_tokens)
    else:
        w.batches = [[i for i in range(len(toks)) if lengths[i]]] if lengths.any() else []
    return w


def corpus_batches(lengths: Sequence[int], batch_size: int, by_length: bool) -> List[List[int]]:
    """Sentence indexes per batch over a whole (in-memory) corpus: input order, or (by_length)
    longest first, so each batch pads little. Equal lengths keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if by_length else list(range(len(lengths)))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
