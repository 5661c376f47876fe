"""Fused Triton character encoder vs the PyTorch reference (interpreter on the CPU, CUDA on a GPU)."""
from __future__ import annotations

import random

import pytest
import torch

from elmo_fast.reference.char_cnn import char_cnn_ref
from tolerances import assert_close, assert_lowp_close

# every test here runs or imports the Triton kernels (skipped only when triton is absent, conftest)
pytestmark = pytest.mark.interpreter

FIXTURE_FILTERS = [[1, 4], [2, 8], [3, 16], [4, 32], [5, 64]]
STANDARD_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]
FILTERS = {"fixture": (FIXTURE_FILTERS, 4), "standard": (STANDARD_FILTERS, 16)}
L = 50
BOW, EOW, PAD, BOS, EOS = 258, 259, 260, 256, 257  # allennlp ids (stored +1)


def word_ids(word: str) -> list:
    """allennlp character ids (+1) of one token."""
    if word in ("<S>", "</S>"):
        body = [BOS if word == "<S>" else EOS]
    else:
        body = list(word.encode("utf-8")[: L - 2])
    ids = [BOW] + body + [EOW]
    return [i + 1 for i in ids + [PAD] * (L - len(ids))]


SPECIAL_WORDS = ["<S>", "</S>", "a", ",", "x" * 48, "y" * 49, "z" * 75, "naïve", "Übermäßig", "hello"]


def make_chars(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 50] rows covering every case the kernel distinguishes: <S>/</S>, 1-byte and >=48-byte
    tokens, multi-byte utf-8, an all-zero (masked) row, an all-padding row, random ids anywhere
    (padding chars in the middle), and ordinary random words."""
    rng = random.Random(seed)
    rows = [word_ids(w) for w in SPECIAL_WORDS]
    rows.append([0] * L)
    rows.append([PAD + 1] * L)
    rows.append([rng.randint(1, 261) for _ in range(L)])
    while len(rows) < n:
        k = min(int(rng.paretovariate(1.5) * 3), 60)
        rows.append(word_ids("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(k))))
    rng.shuffle(rows)
    return torch.tensor(rows[:n], dtype=torch.long)


def make_params(filters, E: int, dtype=torch.float32, device="cpu"):
    emb = torch.randn(262, E)
    emb[0] = 0
    ws = [torch.randn(w, E, n) / (w * E) ** 0.5 for w, n in filters]
    bs = [0.1 * torch.randn(n) for _, n in filters]
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(emb), [cast(w) for w in ws], [cast(b) for b in bs]


def ref(chars, emb, ws, bs, activation, chunk=8192):
    """char_cnn_ref in chunks of tokens (its [N, n, windows] conv output is 24 GB in fp64 at 64 k)."""
    return torch.cat([char_cnn_ref(chars[i:i + chunk], emb, ws, bs, activation)
                      for i in range(0, chars.shape[0], chunk)])


def check(out, chars, emb, ws, bs, activation, msg=""):
    """fp32: the table's tolerance against the fp32 reference; bf16: the flash-attention rule."""
    if emb.dtype == torch.float32:
        assert_close(out, ref(chars, emb, ws, bs, activation), msg=msg)
    else:
        ref64 = ref(chars, emb.double(), [w.double() for w in ws], [b.double() for b in bs], activation)
        torch_lowp = ref(chars, emb, ws, bs, activation)
        assert out.dtype == emb.dtype
        assert_lowp_close(out, ref64, torch_lowp, msg=msg)


CASES = [
    pytest.param(7, "fixture", "relu", id="N7-fixture-relu"),
    pytest.param(37, "fixture", "tanh", id="N37-fixture-tanh"),
    pytest.param(13, "standard", "relu", id="N13-standard-relu"),
    pytest.param(13, "standard", "tanh", id="N13-standard-tanh"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, filters, activation", CASES)
def test_char_cnn_matches_reference(n, filters, activation, dtype, device):
    from elmo_fast.kernels.char_cnn import char_cnn_fwd

    flt, E = FILTERS[filters]
    chars = make_chars(n).to(device)
    emb, ws, bs = make_params(flt, E, dtype, device)
    out = char_cnn_fwd(chars, emb, ws, bs, activation)
    check(out, chars, emb, ws, bs, activation)


def test_char_cnn_through_op(monkeypatch, device):
    """The op picks the Triton backend when forced and gives the reference's result."""
    from elmo_fast.ops import _dispatch
    from elmo_fast.ops.char_cnn import char_cnn

    monkeypatch.setenv("ELMO_FAST_BACKEND", "triton")
    chars = make_chars(9).to(device)
    emb, ws, bs = make_params(FIXTURE_FILTERS, 4, device=device)
    op = _dispatch.OPS["char_cnn"]
    assert op.select(chars=chars, char_embed=emb, conv_weights=ws, conv_biases=bs,
                     activation="relu").name == "triton"
    check(char_cnn(chars, emb, ws, bs, "relu"), chars, emb, ws, bs, "relu")


def test_char_cnn_small_tiles_strided_int32(device):
    """Several token blocks and several filter tiles per width; chars as a non-contiguous int32
    slice of a wider tensor; non-contiguous embedding table."""
    from elmo_fast.kernels.char_cnn import char_cnn_fwd

    wide = torch.zeros(21, 2 * L, dtype=torch.int32)
    wide[:, ::2] = make_chars(21).int()
    chars = wide[:, ::2].to(device)
    emb, ws, bs = make_params(FIXTURE_FILTERS, 4, device=device)
    emb_t = emb.t().contiguous().t()  # same values, column-major
    out = char_cnn_fwd(chars, emb_t, ws, bs, "relu", block_t=16, block_n=16)
    check(out, chars.long(), emb, ws, bs, "relu")


@pytest.mark.parametrize("use_pad_trick", [True, False], ids=["pad-trick", "every-window"])
def test_pad_trick_and_full_computation_match_reference(use_pad_trick, device):
    """Visiting only the windows that touch real characters + the per-filter padding constant, and
    visiting every window, both give the reference result (the rows include all-padding windows)."""
    from elmo_fast.kernels.char_cnn import char_cnn_fwd

    chars = make_chars(19, seed=3).to(device)
    assert ((chars == PAD + 1).sum(1) > 0).any()
    emb, ws, bs = make_params(FIXTURE_FILTERS, 4, device=device)
    check(char_cnn_fwd(chars, emb, ws, bs, "tanh", use_pad_trick=use_pad_trick), chars, emb, ws, bs, "tanh")


# filter counts that are not multiples of any block (and one wider than a block), E not a power of 2
ODD_FILTERS, ODD_E = [[1, 5], [2, 300], [3, 17]], 5


@pytest.mark.parametrize("dtype", DTYPES)
def test_char_cnn_odd_filter_counts_span_tiles(dtype, device):
    """Widths whose filter count spans several BLOCK_N tiles with a partial last one, at the launch
    configuration in use, and more tokens than one BLOCK_T block (with a partial last block)."""
    from elmo_fast.kernels import char_cnn as k

    meta = k._launch_config(torch.device(device), dtype, L, ODD_E)
    assert 300 > meta["BLOCK_N"] and 300 % meta["BLOCK_N"] and 37 > meta["BLOCK_T"] and 37 % meta["BLOCK_T"]
    chars = make_chars(37, seed=5).to(device)
    emb, ws, bs = make_params(ODD_FILTERS, ODD_E, dtype, device)
    check(k.char_cnn_fwd(chars, emb, ws, bs, "relu"), chars, emb, ws, bs, "relu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_char_cnn_gpu_tile_config_under_interpreter(dtype, device):
    """The block sizes the launcher picks on a GPU (64x64 fp32, 64x128 bf16), run for numbers: more
    tokens than BLOCK_T and filter counts spanning several BLOCK_N tiles with partial ones."""
    from elmo_fast.kernels import char_cnn as k

    gpu = k._block_config(torch.device("cuda"), dtype)
    n = gpu["BLOCK_T"] + 5
    filters = [[1, 6], [3, 2 * gpu["BLOCK_N"] + 3], [6, gpu["BLOCK_N"] + 1]]
    chars = make_chars(n, seed=6).to(device)
    emb, ws, bs = make_params(filters, 16, dtype, device)
    out = k.char_cnn_fwd(chars, emb, ws, bs, "tanh", block_t=gpu["BLOCK_T"], block_n=gpu["BLOCK_N"])
    check(out, chars, emb, ws, bs, "tanh")


def test_pack_cache(device):
    """Repeated calls reuse the packed weights; an in-place update or new tensors repack."""
    from elmo_fast.kernels import char_cnn as k

    chars = make_chars(5).to(device)
    emb, ws, bs = make_params(FIXTURE_FILTERS, 4, device=device)
    k.char_cnn_fwd(chars, emb, ws, bs)
    entry = k._pack(emb, ws, bs, k._block_config(emb.device, emb.dtype)["BLOCK_N"], True)
    k.char_cnn_fwd(chars, emb, ws, bs)
    assert k._pack(emb, ws, bs, k._block_config(emb.device, emb.dtype)["BLOCK_N"], True) is entry
    with torch.no_grad():
        ws[2].mul_(2.0)
    check(k.char_cnn_fwd(chars, emb, ws, bs), chars, emb, ws, bs, "relu", msg="after in-place update")


def test_not_supported_reasons():
    from elmo_fast.kernels.char_cnn import not_supported_reasons

    chars = make_chars(3)
    emb, ws, bs = make_params(FIXTURE_FILTERS, 4)
    good = dict(chars=chars, char_embed=emb, conv_weights=ws, conv_biases=bs, activation="relu")
    assert not_supported_reasons(good, forced=False)  # CPU tensors: never chosen automatically
    bad = dict(good, char_embed=emb.double(), activation="gelu", conv_weights=ws[:-1] + [ws[-1][:, :3]])
    text = " ".join(not_supported_reasons(bad, forced=True))
    assert "float64" in text and "gelu" in text and "conv_weights[4]" in text


# ---- on a GPU: realistic sizes --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_char_cnn_gpu_realistic(dtype, activation):
    from elmo_fast.kernels.char_cnn import char_cnn_fwd

    chars = make_chars(65536, seed=1).cuda()
    emb, ws, bs = make_params(STANDARD_FILTERS, 16, dtype, "cuda")
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # an fp32 reference, not a TF32 one
    try:
        check(char_cnn_fwd(chars, emb, ws, bs, activation), chars, emb, ws, bs, activation)
    finally:
        torch.backends.cudnn.allow_tf32 = prev


def test_pack_cache_inference_tensors(device):
    """Weights made under torch.inference_mode have no version counter: the launcher must still run,
    and an in-place change to them (which nothing records) must not be served from the cache."""
    from elmo_fast.kernels.char_cnn import char_cnn_fwd

    chars = make_chars(6).to(device)
    with torch.inference_mode():
        emb, ws, bs = make_params(FIXTURE_FILTERS, 4, device=device)
    check(char_cnn_fwd(chars, emb, ws, bs), chars, emb, ws, bs, "relu")
    with torch.inference_mode():
        ws[1].mul_(2.0)
    check(char_cnn_fwd(chars, emb, ws, bs), chars, emb, ws, bs, "relu", msg="after in-place update")
