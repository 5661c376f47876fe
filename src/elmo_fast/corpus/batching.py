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
import torch

from ..chars import batch_to_ids
from .reader import in_lists
from .tokens import TokenTable, tokenize

MODES = ("input", "bucket")


@dataclass
class Window:
    """Consecutive sentences start .. start + len - 1 and the batches that cover their tokens.

    lines: the input line of each sentence; text: the stripped lines; lengths: token counts;
    batches: positions inside the window (not global indexes), each batch one model call. The tokens
    are in `table` (a tokens.TokenTable over the text's bytes) or, where that split cannot be exact
    (tokens.py), in `tokens` as Python lists."""

    start: int
    lines: List[int]
    text: List[str]
    tokens: Optional[List[List[str]]]
    lengths: np.ndarray
    batches: List[List[int]] = field(default_factory=list)
    offsets: np.ndarray = None  # [len + 1] token offsets of the sentences inside the window
    table: Optional[TokenTable] = None

    def __post_init__(self):
        if self.offsets is None:
            self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.text)

    @property
    def stop(self) -> int:
        return self.start + len(self.text)

    def batch_ids(self, j: int) -> torch.Tensor:
        """Character ids of batch j: LongTensor [B, T, 50], as batch_to_ids of its sentences' tokens."""
        if self.table is not None:
            return self.table.char_ids(self.batches[j])
        return batch_to_ids([self.tokens[i] for i in self.batches[j]])


def cut(order: Sequence[int], lengths: Sequence[int], batch_size: int,
        batch_tokens: Optional[int]) -> List[List[int]]:
    """Consecutive runs of `order` (positions) within both limits; empty sentences are left out."""
    if batch_tokens is None:   # runs of batch_size, in numpy (the loop below cost the feeder 8 ms a window)
        pos = np.asarray(order, dtype=np.int64)
        pos = pos[np.asarray(lengths, dtype=np.int64)[pos] > 0] if len(pos) else pos
        return [pos[a:a + batch_size].tolist() for a in range(0, len(pos), batch_size)]
    if isinstance(lengths, np.ndarray):
        lengths = lengths.tolist()
    if isinstance(order, np.ndarray):
        order = order.tolist()
    batches: List[List[int]] = []
    cur: List[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
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


Block = Tuple[int, List[int], List[str]]  # (index of the first sentence, input lines, stripped texts)


def windows(items: Iterable[Tuple[int, int, str]], mode: str, batch_size: int, batch_tokens: Optional[int],
            window: int) -> Iterator[Window]:
    """(sentence index, line, text) in order -> Windows with their batches (see the module doc)."""
    blocks = ((c[0][0], [x[1] for x in c], [x[2] for x in c]) for c in in_lists(items))
    return block_windows(blocks, mode, batch_size, batch_tokens, window)


def block_windows(blocks: Iterable[Block], mode: str, batch_size: int, batch_tokens: Optional[int],
                  window: int) -> Iterator[Window]:
    """Blocks of consecutive sentences (reader.sentence_blocks) -> Windows with their batches.

    In "bucket" mode the first window may be partial when the blocks start inside one (a shard or a
    resumed run always starts at a boundary, so that does not happen there)."""
    if mode not in MODES:
        raise ValueError(f"batching mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_limits(batch_size, batch_tokens, window)
    if mode == "bucket":
        return _bucket_windows(blocks, batch_size, batch_tokens, window)
    return _input_windows(blocks, batch_size, batch_tokens)


def _bucket_windows(blocks: Iterable[Block], batch_size: int, batch_tokens: Optional[int],
                    window: int) -> Iterator[Window]:
    start, lines, text = 0, [], []          # the window being filled
    for k0, nums, texts in blocks:
        i = 0
        while i < len(texts):
            if not text:
                start = k0 + i
            end = (start // window + 1) * window        # the window's last sentence + 1
            take = min(end - (k0 + i), len(texts) - i)
            lines.extend(nums[i:i + take])
            text.extend(texts[i:i + take])
            i += take
            if start + len(text) == end:
                yield _bucket_window(start, lines, text, batch_size, batch_tokens)
                lines, text = [], []
    if text:
        yield _bucket_window(start, lines, text, batch_size, batch_tokens)


def _split(text: List[str]):
    """(TokenTable or None, token lists or None, lengths)"""
    table = tokenize(text)
    if table is not None:
        return table, None, table.counts
    toks = [t.split() for t in text]
    return None, toks, np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))


def _bucket_window(start: int, lines: List[int], text: List[str], batch_size: int,
                   batch_tokens: Optional[int]) -> Window:
    table, toks, lengths = _split(text)
    w = Window(start, lines, text, toks, lengths, table=table)
    order = np.argsort(-lengths, kind="stable")     # longest first; ties keep input order
    w.batches = cut(order, lengths, batch_size, batch_tokens)
    return w


@dataclass
class _Run:
    """Consecutive sentences with their tokens (a table, or token lists where the table cannot be)."""

    start: int
    lines: List[int]
    text: List[str]
    table: Optional[TokenTable]
    toks: Optional[List[List[str]]]
    lengths: np.ndarray

    @classmethod
    def of(cls, start: int, lines: List[int], text: List[str]) -> "_Run":
        return cls(start, lines, text, *_split(text))

    def part(self, a: int, b: int) -> "_Run":
        return _Run(self.start + a, self.lines[a:b], self.text[a:b],
                    None if self.table is None else self.table.sub(a, b),
                    None if self.toks is None else self.toks[a:b], self.lengths[a:b])

    def then(self, other: "_Run") -> "_Run":
        """This run followed by `other` (the sentences right after it)."""
        if self.table is not None and other.table is not None:
            table, toks = self.table.concat(other.table), None
        else:
            table, toks = None, self.token_lists() + other.token_lists()
        return _Run(self.start, self.lines + other.lines, self.text + other.text, table, toks,
                    np.concatenate([self.lengths, other.lengths]))

    def token_lists(self) -> List[List[str]]:
        return self.toks if self.toks is not None else self.table.token_lists()

    def window(self) -> Window:
        w = Window(self.start, self.lines, self.text, self.toks, self.lengths, table=self.table)
        w.batches = [np.flatnonzero(self.lengths).tolist()] if self.lengths.any() else []
        return w


def _input_windows(blocks: Iterable[Block], batch_size: int, batch_tokens: Optional[int]) -> Iterator[Window]:
    """A window is one batch, in input order; it ends before the sentence with tokens that would break
    a limit (sentences without tokens join the open window). Each block is split once; the open
    window at its end is carried into the next."""
    carry: Optional[_Run] = None
    real, longest = 0, 0  # sentences with tokens in the open window, and the longest
    for k0, nums, texts in blocks:
        run = _Run.of(k0, list(nums), texts)
        cuts, filled = [], carry is not None
        for i, n in enumerate(run.lengths.tolist()):
            if filled and n > 0 and (real == batch_size or (batch_tokens is not None and real > 0
                                                            and (real + 1) * max(longest, n) > batch_tokens)):
                cuts.append(i)
                real, longest = 0, 0
            filled = True
            real, longest = real + (n > 0), max(longest, n)
        a = 0
        for b in cuts:
            piece = run.part(a, b)
            yield (carry.then(piece) if carry is not None else piece).window()
            carry, a = None, b
        rest = run.part(a, len(texts))
        carry = carry.then(rest) if carry is not None else rest
    if carry is not None and carry.text:
        yield carry.window()


def corpus_batches(lengths: Sequence[int], batch_size: int, by_length: bool) -> List[List[int]]:
    """Sentence indexes per batch over a whole (in-memory) corpus: input order, or (by_length)
    longest first, so each batch pads little. Equal lengths keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if by_length else list(range(len(lengths)))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
