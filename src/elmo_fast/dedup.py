"""Token deduplication ahead of the character encoder.

Word frequencies are Zipfian, so a batch of N tokens holds far fewer distinct character rows; the
char CNN + highway only need to run on those and be gathered back with `inverse`.

Two exact methods:
  'hash' (default): pack each row's ids (9 bits each, 7 per int64 word: [N, ceil(L/7)]), mix the
          words into one int64 key, 1-d torch.unique on the keys (a radix sort), then verify that
          every row equals its representative; a hash collision (never seen in practice) falls
          back to 'sort'. Exact either way.
  'sort':  torch.unique(packed rows, dim=0) (lexicographic row sort).
By default (sort_by_length=True) the unique rows come out ordered by real length (the position after
the last non-padding char), so the char-CNN kernel's token blocks hold tokens of similar length
and visit fewer windows (its loop bound is the longest token of each block).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .chars import PADDING_ID as PAD_ID
_BITS = 9  # ids are 0..261
_PER_WORD = 7  # 63 bits: the packed words stay non-negative
_MIX = (-7046029254386353131, -4658895280553007687, 0x2545F4914F6CDD1D)  # odd 64-bit constants


def pack_rows(chars: torch.Tensor) -> torch.Tensor:
    """[N, L] ids in 0..511 -> [N, ceil(L/7)] int64, an injective packing of each row."""
    N, L = chars.shape
    words = -(-L // _PER_WORD)
    c = chars.long()
    if words * _PER_WORD != L:
        c = torch.nn.functional.pad(c, (0, words * _PER_WORD - L))
    shifts = torch.arange(_PER_WORD, device=c.device, dtype=torch.int64) * _BITS
    return (c.view(N, words, _PER_WORD) << shifts).sum(-1)


def _mix(packed: torch.Tensor) -> torch.Tensor:
    """[N, W] int64 -> [N] int64 key (wrap-around multiply/xor-shift mixing)."""
    h = torch.zeros(packed.shape[0], dtype=torch.int64, device=packed.device)
    for i in range(packed.shape[1]):
        h = (h ^ packed[:, i]) * _MIX[i % 2]
        h = h ^ (h >> 31)
    return h * _MIX[2]


def _first_index(inverse: torch.Tensor, n_unique: int) -> torch.Tensor:
    """Index of the first row of each group."""
    N = inverse.shape[0]
    idx = torch.arange(N, device=inverse.device)
    first = torch.full((n_unique,), N, dtype=torch.int64, device=inverse.device)
    return first.scatter_reduce_(0, inverse, idx, reduce="amin", include_self=True)


def real_lengths(chars: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
    """[N, L] -> [N] int64: 1 + index of the last char that is not the padding char (0 if none)."""
    pos = torch.arange(1, chars.shape[1] + 1, device=chars.device)
    return torch.where(chars != pad_id, pos, 0).amax(dim=1) if chars.shape[0] else pos[:0]


def unique_tokens(chars: torch.Tensor, method: str = "hash",
                  sort_by_length: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Distinct character rows and the map back.

    chars:   [N, L] int character ids
    returns  unique_chars [U, L] (same dtype/device), inverse [N] int64 with
             unique_chars[inverse] == chars exactly.
    """
    if chars.dim() != 2:
        raise ValueError(f"chars must be [N, L], got shape {tuple(chars.shape)}")
    if method not in ("hash", "sort"):
        raise ValueError(f"method must be 'hash' or 'sort', not {method!r}")
    if chars.shape[0] == 0:
        return chars[:0], torch.zeros(0, dtype=torch.int64, device=chars.device)
    packed = pack_rows(chars)
    inverse = None
    if method == "hash":
        _, inv = torch.unique(_mix(packed), return_inverse=True)
        first = _first_index(inv, int(inv.max()) + 1)
        if torch.equal(packed[first][inv], packed):
            inverse = inv
    if inverse is None:  # 'sort', or a hash collision
        _, inverse = torch.unique(packed, dim=0, return_inverse=True)
        first = _first_index(inverse, int(inverse.max()) + 1)
    if sort_by_length:
        order = torch.argsort(real_lengths(chars[first]), stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0], device=order.device)
        first, inverse = first[order], rank[inverse]
    return chars[first], inverse
