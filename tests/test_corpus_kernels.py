"""The corpus job's C++ kernels (elmo_fast._cpu_kernels) against their references: the first pass's
lines (csrc/cpu/scan_lines.cpp, lines.scan_lines vs scan_lines_ref and str methods), the byte-level
whitespace split (csrc/cpu/split_tokens.cpp, tokenize vs numpy's split_bytes_ref and str.split), a
batch's character ids from a token table (csrc/cpu/char_ids.cpp, TokenTable.char_ids vs char_ids_ref
and batch_to_ids)
and a batch's output converted and placed in a window buffer (csrc/cpu/place_rows.cpp, place.py:
place_batch vs place_batch_ref), on fresh random inputs, odd shapes, strided sources and poisoned
outputs. Also the two numpy fast paths beside them: batching.cut without a token limit and
layouts.utf8_joined."""
import numpy as np
import pytest
import torch

from elmo_fast.chars import batch_to_ids
from elmo_fast.corpus.batching import cut
from elmo_fast.corpus.layouts import to_storage, utf8_joined
from elmo_fast.corpus.lines import first_invalid_utf8, scan_lines, scan_lines_ref
from elmo_fast.corpus.place import place_batch, place_batch_ref
from elmo_fast.corpus.tokens import WIDE_SPACES, tokenize
from elmo_fast.reference._cpu_gemm import cpu_kernels, cpu_kernels_status
from test_corpus_tokens import _sentences

needs_kernels = pytest.mark.skipif(cpu_kernels() is None,
                                   reason=f"elmo_fast._cpu_kernels does not run here: {cpu_kernels_status()}")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------ the first pass's lines
_ENDS = ["\n", "\r\n", "\r", "\n\n", "\r\r\n"]


def _raw_lines(rng, n):
    """n lines of _sentences' text with spaces around them, joined by every kind of line end."""
    out = []
    for t in _sentences(rng, n, empty=0.2):
        t = t.replace("\r", "\x0b")   # \r ends a line in a file
        pad = ["", " ", "\t ", "\x1c", "  \x0c"]
        out.append(pad[int(rng.integers(len(pad)))] + t + pad[int(rng.integers(len(pad)))]
                   + _ENDS[int(rng.integers(len(_ENDS)))])
    return "".join(out).encode("utf-8")


@needs_kernels
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lines_kernel_equals_the_reference_and_str_methods(seed):
    rng = np.random.default_rng(seed)
    data = _raw_lines(rng, int(rng.integers(1, 300)))
    got, counts = scan_lines(data, native=True)
    want, want_counts = scan_lines_ref(data)
    assert bytes(got) == want and counts.tolist() == want_counts.tolist()
    lines = [s.strip() for s in data.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]]
    assert want == ("\n".join(lines) + "\n").encode()
    assert want_counts.tolist() == [len(s.split()) for s in lines]


@needs_kernels
def test_lines_kernel_writes_exactly_what_it_returns():
    mod = cpu_kernels()
    data = b"  a bb \r\n\n\t\r ccc\x1cd\x0b\re \n"
    src = np.frombuffer(data, np.uint8)
    out = np.full(len(data) + 8, 0xEE, np.uint8)
    counts = np.full(len(data) + 8, -7, np.int64)
    lines, size = mod.scan_lines(src.ctypes.data, len(data), out.ctypes.data, counts.ctypes.data, len(data))
    assert (lines, bytes(out[:size])) == (5, b"a bb\n\n\nccc\x1cd\ne\n")
    assert counts[:lines].tolist() == [2, 0, 0, 2, 1]
    assert (out[size:] == 0xEE).all() and (counts[lines:] == -7).all()
    with pytest.raises(ValueError, match="more lines than counts"):
        mod.scan_lines(src.ctypes.data, len(data), out.ctypes.data, counts.ctypes.data, 2)
    with pytest.raises(ValueError, match="does not end with a line end"):
        scan_lines(b"a\nb", native=True)
    assert scan_lines(b"", native=True)[0] == b"" and len(scan_lines(b"", native=True)[1]) == 0


@needs_kernels
@pytest.mark.parametrize("space", list(WIDE_SPACES))
def test_lines_kernel_leaves_every_unicode_space_to_python(space):
    mod = cpu_kernels()
    for text in (f"a{space}b\n", f"{space}x\n", f"ok\nx{space}\r", f"{space}\n"):
        data = text.encode()
        src = np.frombuffer(data, np.uint8)
        out, counts = np.empty(len(data), np.uint8), np.empty(len(data), np.int64)
        got = mod.scan_lines(src.ctypes.data, len(data), out.ctypes.data, counts.ctypes.data, len(data))
        assert got[0] == -2
        got, n = scan_lines(data, native=True)   # the launcher hands the block to the reference
        lines = [s.strip() for s in text.replace("\r", "\n").split("\n")[:-1]]
        assert bytes(got) == ("\n".join(lines) + "\n").encode()
        assert n.tolist() == [len(s.split()) for s in lines]


# ---------------------------------------------------------------------------------- the split
# sequences at the edges of table 3-7 (Unicode Standard): each well-formed or not as Python decides
_UTF8_EDGES = [b"\x7f", b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xdf\xbf",
               b"\xe0\x9f\x80", b"\xe0\xa0\x80", b"\xec\xbf\xbf", b"\xed\x9f\xbf", b"\xed\xa0\x80",
               b"\xed\xbf\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80",
               b"\xf3\xbf\xbf\xbf", b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff",
               b"\xe2\x82", b"\xf0\x9f\x98", b"\xe2\x28\xa1", b"\xf0\x9f\x28\x80", "é€😀 ".encode(),
               b"plain ascii text ", b"\n", b"\r"]


@needs_kernels
@pytest.mark.parametrize("seed", range(6))
def test_utf8_kernel_stops_where_pythons_decoder_does(seed):
    """The first ill-formed sequence's offset (UnicodeDecodeError.start) on random joins of valid
    text and every edge of the well-formedness table, one byte changed in half of them, cut at any
    length (a character cut off at the end is ill-formed); -1 where Python decodes it all."""
    rng = np.random.default_rng(seed)
    for _ in range(300):
        data = bytearray(b"".join(_UTF8_EDGES[i] if rng.random() < 0.3 else "abc déf 中文 ".encode()
                                  for i in rng.integers(len(_UTF8_EDGES), size=int(rng.integers(1, 12)))))
        if rng.random() < 0.5 and data:
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        data = bytes(data[:int(rng.integers(len(data) + 1))])
        try:
            data.decode("utf-8")
            want = -1
        except UnicodeDecodeError as e:
            want = e.start
        assert first_invalid_utf8(data, native=True) == want, data
        assert first_invalid_utf8(data, native=False) == want, data
    assert first_invalid_utf8(b"", native=True) == -1
    assert first_invalid_utf8(b"x" * 1000 + b"\xe9" + b"y" * 7, native=True) == 1000   # past the 8-byte runs


@needs_kernels
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_kernel_equals_numpy_and_str_split(seed):
    rng = np.random.default_rng(seed)
    lines = _sentences(rng, int(rng.integers(1, 200)), empty=0.2)
    a, b = tokenize(lines, native=True), tokenize(lines, native=False)
    for k in ("data", "starts", "lens", "counts", "offsets"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert a.token_lists() == [s.split() for s in lines]


@needs_kernels
@pytest.mark.parametrize("space", list(WIDE_SPACES))
def test_split_kernel_leaves_every_unicode_space_to_python(space):
    for line in (f"a{space}b", f"{space}x", f"x{space}", f"ab c{space}"):
        assert tokenize(["plain", line], native=True) is None
        assert tokenize(["plain", line], native=False) is None


@needs_kernels
def test_split_kernel_keeps_the_characters_next_to_the_unicode_spaces():
    near = "\x84\x86\xa1\x9f\u1681\u167f\u200b\u2027\u202a\u202e\u2030\u205e\u2060\u3001\u2fff\u0100"
    lines = [f"a{c}b {c}" for c in near]
    table = tokenize(lines, native=True)
    assert table is not None and table.token_lists() == [s.split() for s in lines]


@needs_kernels
def test_split_kernel_writes_every_count_and_refuses_line_ends_inside():
    mod = cpu_kernels()
    data = np.frombuffer(b"a bb\n\nccc  d \ne", np.uint8)
    cap = len(data) // 2 + 1
    starts, lens = np.full(cap, -7, np.int64), np.full(cap, -7, np.int64)
    counts = np.full(4, -7, np.int64)
    n = mod.split_tokens(data.ctypes.data, len(data), starts.ctypes.data, lens.ctypes.data, cap,
                         counts.ctypes.data, 4)
    assert n == 5 and counts.tolist() == [2, 0, 2, 1]
    assert starts[:n].tolist() == [0, 2, 6, 11, 14] and lens[:n].tolist() == [1, 2, 3, 1, 1]
    for lines in (3, 5):   # the bytes hold 4 sentences
        assert mod.split_tokens(data.ctypes.data, len(data), starts.ctypes.data, lens.ctypes.data, cap,
                                counts.ctypes.data, lines) == -1
    with pytest.raises(ValueError, match="bad sizes"):
        mod.split_tokens(data.ctypes.data, len(data), starts.ctypes.data, lens.ctypes.data, cap - 1,
                         counts.ctypes.data, 4)
    assert tokenize(["one\ntwo", "three"], native=True) is None


# ------------------------------------------------------------------------------ character ids
@needs_kernels
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_char_ids_kernel_equals_the_reference_and_batch_to_ids(seed):
    rng = np.random.default_rng(seed)
    lines = _sentences(rng, int(rng.integers(1, 150)), empty=0.2)   # boundary tokens, > 48 bytes, UTF-8
    table = tokenize(lines)
    split = [s.split() for s in lines]
    for _ in range(6):   # any order, any size, empty sentences, repeats
        pos = rng.integers(len(lines), size=int(rng.integers(1, 2 * len(lines) + 1)))
        got = table.char_ids(pos, native=True)
        assert torch.equal(got, table.char_ids_ref(pos))
        assert torch.equal(got, batch_to_ids([split[i] for i in pos]))


@needs_kernels
def test_char_ids_kernel_writes_every_element_and_checks_its_indexes():
    table = tokenize(["a bb <S>", "", "</S> " + "é" * 40, "x"])
    pos = np.array([2, 1, 0, 3], np.int64)
    n = np.ascontiguousarray(table.counts[pos])
    first = np.ascontiguousarray(table.offsets[pos])
    B, T = len(pos), int(n.max())
    out = torch.full((B, T, 50), -7, dtype=torch.int64)   # poison: every element must be written
    mod = cpu_kernels()
    args = [table.data.ctypes.data, len(table.data), table.starts.ctypes.data, table.lens.ctypes.data,
            len(table.starts)]
    mod.char_ids(*args, first.ctypes.data, n.ctypes.data, B, T, out.data_ptr())
    assert torch.equal(out, table.char_ids_ref(pos))
    bad = first.copy()
    bad[2] = len(table.starts)          # a sentence (of 3 tokens) past the table's last token
    with pytest.raises(ValueError, match="sentence 2 is outside"):
        mod.char_ids(*args, bad.ctypes.data, n.ctypes.data, B, T, out.data_ptr())
    with pytest.raises(ValueError, match="outside"):   # more tokens than the batch holds
        mod.char_ids(*args, first.ctypes.data, n.ctypes.data, B, T - 1, out.data_ptr())


def test_char_ids_without_the_kernel_is_the_reference(monkeypatch):
    from elmo_fast.reference import _cpu_gemm

    table = tokenize(["one two", "three"])
    monkeypatch.setattr(_cpu_gemm, "cpu_kernels", lambda: None)
    assert torch.equal(table.char_ids([1, 0]), table.char_ids_ref([1, 0]))
    with pytest.raises(RuntimeError, match="do not run here"):
        table.char_ids([0], native=True)


# --------------------------------------------------------------------------- placed outputs
def _batch(rng, g, B, L, T, D, pad_t=0):
    acts = torch.randn(B, L + 1, T + pad_t, D, generator=g) * 300          # beyond float16's 65504 too
    acts[0, 1, 0, : min(D, 4)] = torch.tensor([float("inf"), -float("inf"), 65519.0, -1e-8])[: min(D, 4)]
    src = acts[:, 1:, :T]                      # strided in every dimension but the last
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    perm = rng.permutation(B)                   # the sentences' places: any order, gaps between them
    starts = np.zeros(B, np.int64)
    at = int(rng.integers(0, 3))
    for r in perm:
        starts[r] = at
        at += int(lengths[r]) + int(rng.integers(0, 2))
    return src, lengths.astype(np.int64), starts, at + int(rng.integers(0, 3))


def _bits(t):
    return t.view(torch.int16) if t.dtype != torch.float32 else t.view(torch.int32)


@needs_kernels
@pytest.mark.parametrize("dtype_out", list(DTYPES))
@pytest.mark.parametrize("B,L,T,D", [(1, 1, 1, 1), (3, 1, 5, 7), (5, 3, 9, 16), (4, 2, 6, 33),
                                     (7, 1, 11, 1024)])
def test_place_kernel_equals_the_reference_bit_for_bit(dtype_out, B, L, T, D):
    rng = np.random.default_rng(B * 1000 + D)
    g = torch.Generator().manual_seed(B + D)
    src, lengths, starts, R = _batch(rng, g, B, L, T, D, pad_t=2)
    poison = {"float32": float("nan"), "float16": -7.0, "bfloat16": -7.0}[dtype_out]
    got = torch.full((L, R, D), poison, dtype=DTYPES[dtype_out])
    want = got.clone()
    assert place_batch(got, src, lengths, starts, native=True) is None
    staging = place_batch_ref(want, src, lengths, starts)
    assert torch.equal(_bits(got), _bits(want))
    for r in range(B):   # and each row is to_storage of its source, where the reference put it
        a, n = int(starts[r]), int(lengths[r])
        expect = to_storage(src[r, :, :n], dtype_out)
        assert torch.equal(_bits(got[:, a:a + n]), _bits(expect.view(got.dtype)))
    assert staging is not None


@needs_kernels
@pytest.mark.parametrize("dtype_out", ["float16", "bfloat16"])
def test_place_kernel_keeps_nan_and_rounds_to_nearest_even(dtype_out):
    x = torch.tensor([float("nan"), 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8,
                      -0.0, 3.0e38, 1e-30] * 3)                        # 24: vector body and scalar tail
    src = x.view(1, 1, 1, -1)
    buf = torch.zeros(1, 1, x.numel(), dtype=DTYPES[dtype_out])
    place_batch(buf, src, np.array([1]), np.array([0]), native=True)
    out = buf.float().view(-1)
    ref = x.to(DTYPES[dtype_out]).float()
    assert torch.isnan(out[0::8]).all()
    keep = ~torch.isnan(ref)
    assert torch.equal(out[keep], ref[keep])


@needs_kernels
def test_place_kernel_rejects_what_it_cannot_take():
    src = torch.zeros(2, 1, 3, 4)
    buf = torch.zeros(1, 5, 4, dtype=torch.float16)
    ok = (np.array([3, 1]), np.array([0, 3]))
    place_batch(buf, src, *ok, native=True)
    with pytest.raises(ValueError, match="sentence 1 is outside"):   # past the buffer's rows
        place_batch(buf, src, np.array([3, 1]), np.array([0, 5]), native=True)
    with pytest.raises(ValueError, match="sentence 0 is outside"):   # more tokens than the batch has
        place_batch(buf, src, np.array([4, 1]), np.array([0, 4]), native=True)
    with pytest.raises(ValueError, match="expected float32"):
        place_batch(buf, src.double(), *ok, native=True)
    with pytest.raises(ValueError, match="expected float32"):
        place_batch(buf, src.transpose(2, 3), *ok, native=True)       # D not contiguous
    with pytest.raises(ValueError, match="expected float32"):
        place_batch(torch.zeros(1, 5, 8, dtype=torch.float16)[:, :, :4], src, *ok, native=True)


def test_place_without_the_kernel_is_the_reference(monkeypatch):
    from elmo_fast.reference import _cpu_gemm

    rng = np.random.default_rng(0)
    src, lengths, starts, R = _batch(rng, torch.Generator().manual_seed(0), 3, 1, 4, 8)
    a, b = torch.zeros(1, R, 8, dtype=torch.float16), torch.zeros(1, R, 8, dtype=torch.float16)
    monkeypatch.setattr(_cpu_gemm, "cpu_kernels", lambda: None)
    assert place_batch(a, src, lengths, starts) is not None     # the reference's staging tensor
    place_batch_ref(b, src, lengths, starts)
    assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="do not run here"):
        place_batch(a, src, lengths, starts, native=True)


# -------------------------------------------------------------------------- numpy fast paths
def test_cut_without_a_token_limit_equals_the_greedy_loop():
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(0, 300))
        lengths, order = rng.integers(0, 5, n), rng.permutation(n)
        size = int(rng.integers(1, 70))
        loop = cut(order, lengths, size, 10 ** 12)          # a limit never reached: the loop, by size alone
        assert cut(order, lengths, size, None) == loop
        assert cut(order.tolist(), lengths.tolist(), size, None) == loop
        assert all(lengths[i] > 0 for b in loop for i in b)


def test_utf8_joined_sizes_every_sentence():
    text = ["", "abc", "naïve", "日本語 x", "🙂a", "", "z" * 70, "\x00\x7f\x80\u07ff\u0800\uffff\U00010000"]
    data, sizes = utf8_joined(text)
    assert data == "".join(text).encode("utf-8")
    assert sizes.tolist() == [len(t.encode("utf-8")) for t in text]
    data, sizes = utf8_joined(["plain", "ascii"])
    assert data == b"plainascii" and sizes.tolist() == [5, 5]
    data, sizes = utf8_joined([])
    assert data == b"" and sizes.tolist() == []
