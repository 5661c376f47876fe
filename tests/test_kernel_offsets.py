"""Offsets into [B, T, 4C] tensors in the Triton LSTM step kernels are int64 (issue 16 item 7): for
the original model at B = 1024, T >= 128, B*T*4C reaches 2**31 and int32 offsets wrap. Checked
on the kernels' own offset helper, at batch rows whose offsets pass 2**31 (no 8 GB tensor needed)."""
import pytest
import torch
import triton
import triton.language as tl
from elmo_fast.kernels.lstm_step import _row_offsets


@triton.jit
def _offsets_kernel(out_ptr, rb0, stride_b, stride_t, T, BLOCK: tl.constexpr):
    k = tl.arange(0, BLOCK)
    tl.store(out_ptr + k, _row_offsets(rb0 + k, k % T, stride_b, stride_t))


@pytest.mark.interpreter
@pytest.mark.parametrize("B,T,C", [pytest.param(1024, 160, 4096, id="original-B1024-T160"),
                                   pytest.param(1024, 511, 4096, id="original-B1024-T511"),
                                   pytest.param(8192, 63, 2048, id="medium-B8192-T63")])
def test_row_offsets_do_not_wrap(device, B, T, C):
    """The last rows of the batch, whose offsets rb * T*4C + pos * 4C pass 2**31."""
    stride_b, stride_t, block = T * 4 * C, 4 * C, 8
    rb0 = B - block
    out = torch.full((block,), -1, dtype=torch.int64, device=device)
    _offsets_kernel[(1,)](out, rb0, stride_b, stride_t, T, BLOCK=block)
    want = [(rb0 + k) * stride_b + (k % T) * stride_t for k in range(block)]
    assert max(want) >= 2 ** 31
    assert out.cpu().tolist() == want
