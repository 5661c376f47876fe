"""Token deduplication: exact round trip, and encoding unique tokens equals encoding all of them."""
from __future__ import annotations

import pytest
import torch

from elmo_fast import dedup
from elmo_fast.dedup import real_lengths, unique_tokens
from elmo_fast.reference.char_cnn import char_cnn_ref
from elmo_fast.reference.highway import highway_ref
from test_char_cnn import FIXTURE_FILTERS, make_chars, make_params
from tolerances import assert_close


def zipf_batch(n: int, vocab: int = 40, seed: int = 0) -> torch.Tensor:
    """n tokens drawn Zipf-like from `vocab` distinct rows (with a masked all-zero row among them)."""
    g = torch.Generator().manual_seed(seed)
    types = make_chars(vocab, seed=seed)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    return types[torch.multinomial(p, n, replacement=True, generator=g)]


@pytest.mark.parametrize("method", ["hash", "sort"])
@pytest.mark.parametrize("sort_by_length", [False, True], ids=["any-order", "by-length"])
def test_round_trip(method, sort_by_length):
    chars = zipf_batch(500)
    uniq, inverse = unique_tokens(chars, method=method, sort_by_length=sort_by_length)
    assert uniq.dtype == chars.dtype and inverse.dtype == torch.int64
    assert torch.equal(uniq[inverse], chars)
    assert uniq.shape[0] == torch.unique(chars, dim=0).shape[0]
    if sort_by_length:
        lengths = real_lengths(uniq)
        assert torch.all(lengths[1:] >= lengths[:-1])


def test_empty_and_int32():
    uniq, inverse = unique_tokens(torch.zeros(0, 50, dtype=torch.long))
    assert uniq.shape == (0, 50) and inverse.shape == (0,)
    chars = zipf_batch(64).int()
    uniq, inverse = unique_tokens(chars)
    assert uniq.dtype == torch.int32 and torch.equal(uniq[inverse], chars)


def test_hash_collision_falls_back(monkeypatch):
    """Every row hashing to the same key must still give the exact answer."""
    monkeypatch.setattr(dedup, "_mix", lambda packed: torch.zeros(packed.shape[0], dtype=torch.int64))
    chars = zipf_batch(100)
    uniq, inverse = unique_tokens(chars)
    assert torch.equal(uniq[inverse], chars) and uniq.shape[0] > 1


def test_encode_unique_equals_encode_all_reference():
    chars = zipf_batch(300)
    emb, ws, bs = make_params(FIXTURE_FILTERS, 4)
    uniq, inverse = unique_tokens(chars, sort_by_length=True)
    assert torch.equal(char_cnn_ref(uniq, emb, ws, bs)[inverse], char_cnn_ref(chars, emb, ws, bs))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_char_encoder_encode_equals_encoding_without_dedup(tmp_path, activation):
    """CharEncoder.encode (dedup, encode the distinct rows, gather back) gives every row what the
    reference char CNN + highway + projection give when run on all rows, duplicates and masked
    rows included."""
    from elmo_fast import CharEncoder, load_model
    from elmo_fast.synthetic import make_options, write_model

    opts = make_options(char_dim=4, filters=FIXTURE_FILTERS, n_highway=2, dim=16, projection_dim=8,
                        activation=activation)
    encoder = CharEncoder(load_model(*write_model(str(tmp_path), opts, seed=2, scale=0.5))).eval()
    chars = zipf_batch(300)
    assert torch.unique(chars, dim=0).shape[0] < chars.shape[0] // 4  # many duplicates
    with torch.no_grad():
        got = encoder.encode(chars)
        x = char_cnn_ref(chars, encoder.char_embed, list(encoder.conv_w), list(encoder.conv_b), activation)
        want = highway_ref(x, [tuple(layer) for layer in encoder.highway], encoder.w_proj, encoder.b_proj)
    assert_close(got, want)


@pytest.mark.interpreter
def test_encode_unique_equals_encode_all_triton(device):
    """Each token's output depends only on its own row (block membership and the per-block loop
    bound must not change it), so on a GPU dedup + gather is bit-exact with the fused kernel too.
    The interpreter's tl.dot is numpy's BLAS matmul, whose rounding for one row depends on the row's
    place in the block (measured: 1 ulp), so there the fp32 table applies instead."""
    from elmo_fast.kernels.char_cnn import char_cnn_fwd

    chars = zipf_batch(70).to(device)
    emb, ws, bs = make_params(FIXTURE_FILTERS, 4, device=device)
    uniq, inverse = unique_tokens(chars)
    deduped, full = char_cnn_fwd(uniq, emb, ws, bs)[inverse], char_cnn_fwd(chars, emb, ws, bs)
    if chars.is_cuda:
        assert torch.equal(deduped, full)
    else:
        assert_close(deduped, full)
