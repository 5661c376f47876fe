"""Clips that fire, for the LSTM kernel tests (Triton step kernels, CUDA kernel and its host emulation).

With the tests' input scales (|c0| ~ 1, |h| ~ 0.6) ELMo's own clips of 3.0 almost never fire, so a
kernel that skipped them would pass. These are tight enough to fire on most shapes, and
`clipped_reference` proves it for each test input."""
from __future__ import annotations

import torch

from elmo_fast.reference.lstm import lstm_layer_ref
from tolerances import assert_differs

CELL_CLIP, PROJ_CLIP = 1.0, 0.5


def clipped_reference(xproj, w_hh, w_p, lengths, h0, c0, cell_clip, proj_clip, reverse=False):
    """lstm_layer_ref in fp64 on CPU copies of the inputs -> (out, h_T, c_T). When a clip is set,
    asserts that it fires: dropping it changes the result by more than the fp32 tolerance (out or
    c_T for the cell clip, out for the projection clip)."""
    d = [t.detach().cpu().double() if t.is_floating_point() else t.cpu()
         for t in (xproj, w_hh, w_p, lengths, h0, c0)]
    ref = lstm_layer_ref(*d, cell_clip, proj_clip, reverse)
    if cell_clip is not None:
        alt = lstm_layer_ref(*d, None, proj_clip, reverse)
        assert_differs(torch.cat([ref[0].flatten(), ref[2].flatten()]),
                       torch.cat([alt[0].flatten(), alt[2].flatten()]), msg="cell clip")
    if proj_clip is not None:
        assert_differs(ref[0], lstm_layer_ref(*d, cell_clip, None, reverse)[0], msg="projection clip")
    return ref
