"""Reused CPU scratch for the recurrence's gate buffer (the packed input projections, [N, 4C]).

Why: the gate buffer of one layer and direction is 64 KB per token position in the original model
(58 MB for a batch of 32 sentences). glibc serves allocations that large with a fresh mmap each
time, so every forward paid the page faults of touching it anew: ~40 ms per buffer on the 2-core
VMs, a third of the input-projection GEMM that fills it (bench/NOTES.md, issue 12, third session).
CUDA tensors need none of this (PyTorch's caching allocator) and get a plain `torch.empty`.

The pool hands each concurrent borrower its own buffer (the two directions of a layer run at once,
and stateless forwards may run on several threads) and keeps at most KEEP buffers of at most a
quarter of the workspace budget each (ELMO_FAST_WORKSPACE_MB: the chunked recurrence never needs
more per direction), so what stays allocated between forwards is bounded and documented.
`release()` frees them.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List

import torch

from .. import _config

KEEP = 2  # buffers kept between borrows: one per direction of a layer

_lock = threading.Lock()
_free: List[torch.Tensor] = []


@contextlib.contextmanager
def borrow(numel: int, dtype: torch.dtype, device: torch.device) -> Iterator[torch.Tensor]:
    """A 1-D tensor of `numel` elements (contents undefined) for the block; the caller must not keep
    a view of it after the block."""
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes > _config.workspace_bytes() // 4:
        yield torch.empty(numel, dtype=dtype, device=device)
        return
    buf = None
    with _lock:   # the smallest free buffer that fits (bytes); by index, as == on tensors is elementwise
        fits = [i for i, b in enumerate(_free) if b.numel() >= nbytes]
        if fits:
            buf = _free.pop(min(fits, key=lambda i: _free[i].numel()))
    if buf is None:
        buf = torch.empty(nbytes, dtype=torch.uint8)
    try:
        yield buf[:nbytes].view(dtype)
    finally:
        with _lock:
            _free.append(buf)
            if len(_free) > KEEP:        # drop the smallest: the large ones are the costly ones
                _free.pop(min(range(len(_free)), key=lambda i: _free[i].numel()))


def release() -> None:
    """Frees the kept buffers (they are made again on the next forward)."""
    with _lock:
        _free.clear()


def kept_bytes() -> int:
    with _lock:
        return sum(b.numel() for b in _free)
