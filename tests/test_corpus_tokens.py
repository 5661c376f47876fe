"""The feeder's byte-level tokenisation (corpus/tokens.py) against str.split() and batch_to_ids."""
import numpy as np
import pytest

from elmo_fast.chars import batch_to_ids
from elmo_fast.corpus.tokens import token_counts, tokenize

# ASCII words, the boundary tokens, multi-byte characters, words past 48 bytes (cut inside a character)
_WORDS = ["the", "a", "<S>", "</S>", "<S", "S>", "</S>x", "naïve", "日本語", "🙂",
          "x" * 47, "y" * 48, "z" * 49, "é" * 30, "ab" * 40, "😀" * 13, "'", "--", "\x00", "\x7f"]
_ASCII_SPACES = [" ", "  ", "\t", "\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x1f", " \t "]


def _sentences(rng, n, empty=0.1):
    out = []
    for _ in range(n):
        k = 0 if rng.random() < empty else int(rng.integers(1, 30))
        words = [_WORDS[i] for i in rng.integers(len(_WORDS), size=k)]
        text = ""
        for w in words:
            text += w + _ASCII_SPACES[int(rng.integers(len(_ASCII_SPACES)))]
        out.append(text.strip())
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tokenize_equals_split_and_char_ids_equal_batch_to_ids(seed):
    rng = np.random.default_rng(seed)
    lines = _sentences(rng, int(rng.integers(1, 120)))
    table = tokenize(lines)
    assert table is not None
    split = [s.split() for s in lines]
    assert table.counts.tolist() == [len(t) for t in split]
    assert table.token_lists() == split
    for _ in range(5):   # batches in any order, of any size, empty sentences included
        pos = rng.permutation(len(lines))[: int(rng.integers(1, len(lines) + 1))]
        got = table.char_ids(pos)
        want = batch_to_ids([split[i] for i in pos])
        assert got.dtype == want.dtype and got.shape == want.shape
        assert bool((got == want).all())


def test_sub_table_is_the_same_split():
    rng = np.random.default_rng(5)
    lines = _sentences(rng, 40)
    table = tokenize(lines)
    sub = table.sub(7, 31)
    assert sub.token_lists() == [s.split() for s in lines[7:31]]
    both = table.sub(0, 7).concat(sub)
    assert both.token_lists() == [s.split() for s in lines[:31]]
    assert bool((both.char_ids([30, 2, 9]) == batch_to_ids([lines[i].split() for i in (30, 2, 9)])).all())
    pos = [3, 0, 20, 11]
    assert bool((sub.char_ids(pos) == batch_to_ids([lines[7 + i].split() for i in pos])).all())


@pytest.mark.parametrize("line", ["a\u00a0b", "a\u2003b c", "x\u3000", "a\x85b", "one\ntwo", "bad\ud800x"])
def test_text_the_byte_split_cannot_treat_exactly_is_left_to_python(line):
    lines = ["plain words", line]
    assert tokenize(lines) is None
    assert token_counts(lines).tolist() == [len(s.split()) for s in lines]


def test_the_listed_wide_spaces_are_all_of_pythons():
    import sys

    from elmo_fast.corpus.tokens import WIDE_SPACES

    assert WIDE_SPACES == "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if chr(c).isspace())


def test_only_empty_sentences_and_no_sentences():
    table = tokenize(["", "", ""])
    assert table.counts.tolist() == [0, 0, 0]
    ids = table.char_ids([0, 2])
    assert tuple(ids.shape) == (2, 0, 50)
    assert tokenize([]).counts.tolist() == []


# ------------------------------------------------------------------------ windows from blocks
def _reference_windows(texts, mode, batch_size, batch_tokens, window):
    """The batching rules of batching.py, one sentence at a time: [(start, texts, batches)]."""
    out, cur, start = [], [], 0
    real = longest = 0

    def close():
        lengths = [len(t.split()) for t in cur]
        if mode == "bucket":
            order = sorted(range(len(cur)), key=lambda i: -lengths[i])
            batches, b, wide = [], [], 0
            for i in order:
                n = lengths[i]
                if n == 0:
                    continue
                w = max(wide, n)
                if b and (len(b) == batch_size or (batch_tokens and (len(b) + 1) * w > batch_tokens)):
                    batches.append(b)
                    b, w = [], n
                b.append(i)
                wide = w
            if b:
                batches.append(b)
        else:
            batches = [[i for i in range(len(cur)) if lengths[i]]] if any(lengths) else []
        out.append((start, list(cur), batches))

    for k, t in enumerate(texts):
        n = len(t.split())
        if cur:
            over = bool(batch_tokens) and real > 0 and (real + 1) * max(longest, n) > batch_tokens
            full = (k % window == 0) if mode == "bucket" else (n > 0 and (real == batch_size or over))
            if full:
                close()
                cur, start, real, longest = [], k, 0, 0
        cur.append(t)
        real, longest = real + (n > 0), max(longest, n)
    if cur:
        close()
    return out


@pytest.mark.parametrize("mode", ["bucket", "input"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_windows_from_blocks_of_any_size_follow_the_batching_rules(mode, seed):
    from elmo_fast.corpus.batching import block_windows

    rng = np.random.default_rng(seed)
    texts = _sentences(rng, int(rng.integers(1, 150)), empty=0.2)
    if seed == 3:   # some sentences the byte-level split leaves to Python
        texts = [t + "\u00a0z" if i % 7 == 0 else t for i, t in enumerate(texts)]
    batch_size, window = int(rng.integers(1, 9)), int(rng.integers(1, 40))
    batch_tokens = None if seed % 2 else int(rng.integers(5, 80))
    blocks, k = [], 0
    while k < len(texts):   # blocks of random sizes, 1 sentence included
        m = int(rng.integers(1, 25))
        blocks.append((k, list(range(100 + k, 100 + k + m))[: len(texts) - k], texts[k:k + m]))
        k += m
    got = list(block_windows(iter(blocks), mode, batch_size, batch_tokens, window))
    want = _reference_windows(texts, mode, batch_size, batch_tokens, window)
    assert [(w.start, w.text, w.batches) for w in got] == want
    for w in got:
        assert w.lines == list(range(100 + w.start, 100 + w.stop))
        assert w.lengths.tolist() == [len(t.split()) for t in w.text]
        for j, b in enumerate(w.batches):
            assert bool((w.batch_ids(j) == batch_to_ids([w.text[i].split() for i in b])).all())


@pytest.mark.parametrize("empty_lines", ["skip", "keep"])
def test_the_first_pass_in_small_blocks_counts_as_line_by_line(tmp_path, monkeypatch, empty_lines):
    import hashlib

    from elmo_fast.corpus import reader

    rng = np.random.default_rng(7)
    texts = [t.replace("\r", " ") for t in _sentences(rng, 300, empty=0.15)]   # \r ends a line in a file
    path = tmp_path / "in.txt"
    ends = ["\r\n" if i % 5 == 0 else "\n" for i in range(len(texts))]
    path.write_text("".join(t + e for t, e in zip(texts, ends)), encoding="utf-8")
    monkeypatch.setattr(reader, "BLOCK", 97)    # lines and characters split between reads
    found = reader.scan(reader.open_source(str(path)), empty_lines, window=16)
    kept = [t for t in texts if t or empty_lines == "keep"]
    counts = [len(t.split()) for t in kept]
    assert (found.lines, found.sentences, found.tokens) == (len(texts), len(kept), sum(counts))
    assert found.empty == sum(1 for t in texts if not t)
    assert found.first_empty == [i for i, t in enumerate(texts) if not t][:20]
    assert found.window_tokens == max(sum(counts[k:k + 16]) for k in range(0, len(counts), 16))
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\n")
    assert found.sha256 == h.hexdigest()


@pytest.mark.parametrize("window", [1, 7, 64, 5000])
def test_the_first_pass_counts_the_tokens_of_whole_groups_of_windows(monkeypatch, window):
    """Scan.tokens_within(a, b): the tokens of the groups (whole windows, at least _GROUP sentences)
    lying within sentences a..b-1, across the reader's blocks: exact for a range of whole groups
    (a shard, a piece), never more than the range holds. A flat piece checks the disk's room for them."""
    from elmo_fast.corpus import reader

    monkeypatch.setattr(reader, "_GROUP", 50)
    rng = np.random.default_rng(window)
    texts = [" ".join("w" * int(rng.integers(1, 4)) for _ in range(int(rng.integers(1, 9))))
             for _ in range(1234)]
    monkeypatch.setattr(reader, "_SENTENCE_BLOCK", 97)   # groups split between blocks
    found = reader.scan(reader.open_source(texts), window=window)
    g = found.group
    assert g % window == 0 and g >= 50 and len(found.per_group) == -(-len(texts) // g)
    counts = np.array([len(t.split()) for t in texts])
    n = len(texts)
    for a, b in [(0, n), (0, g), (g, 3 * g), (g, n), (5, 2 * g + 1), (0, 5), (3 * g, 3 * g), (2 * g, n + 9)]:
        lo = -(-a // g) * g
        hi = n if b >= n else b // g * g
        want = int(counts[lo:hi].sum()) if hi > lo else 0
        assert found.tokens_within(a, b) == want, (a, b)
        assert want <= counts[a:b].sum()


def _utf8_bad(rng, n):
    """Corpus bytes with every kind of line end, a byte-order mark, multi-byte characters, and (half
    of the time) one bad UTF-8 sequence somewhere."""
    pieces = ["a", "bb", "é", "日本", " ", "\t", "\x1c", "\r", "\n", "\r\n", "\n\n", "\ufeff", "\xa0",
              "\u3000"]
    data = "".join(pieces[i] for i in rng.integers(len(pieces), size=n))
    data = ("\ufeff" if rng.random() < 0.3 else "") + data
    data = data.encode("utf-8")
    if rng.random() < 0.5:
        k = int(rng.integers(len(data) + 1))
        data = data[:k] + [b"\xff", b"\xe2\x82", b"\xc3", b"\xed\xa0\x80"][int(rng.integers(4))] + data[k:]
    return data


@pytest.mark.parametrize("block,kernels", [(1, True), (2, True), (3, True), (7, True), (64, True), (2, False),
                                           (64, False)])
def test_the_first_pass_from_bytes_equals_the_first_pass_from_lines(tmp_path, monkeypatch, block, kernels):
    """The first pass over a file's bytes (lines.scan_lines: the C++ pass where it is built) finds what
    the pass over the reader's lines finds, for files and binary streams read in blocks split
    anywhere (inside characters, between \\r and \\n, inside the byte-order mark): the same counts,
    empty lines, windows and hash, or the same error naming the bad byte's line and offset."""
    import io

    from elmo_fast.corpus import reader
    from elmo_fast.reference import _cpu_gemm

    def settings():
        monkeypatch.setattr(reader, "BLOCK", block)
        if not kernels:   # lines.scan_lines' reference
            monkeypatch.setattr(_cpu_gemm, "cpu_kernels", lambda: None)

    settings()
    rng = np.random.default_rng(block)

    def result(source, how):
        if how == "lines":
            monkeypatch.setattr(type(source), "counted_blocks", lambda self: None)
        try:
            s = reader.scan(source, "keep", window=3)
            return (s.lines, s.sentences, s.tokens, s.empty, s.first_empty, s.sha256, s.window_tokens,
                    list(s.per_group))
        except reader.InputError as e:
            return str(e)
        finally:
            monkeypatch.undo()
            settings()

    for i in range(60):
        data = _utf8_bad(rng, int(rng.integers(0, 50)))
        path = tmp_path / f"c{i}.txt"
        path.write_bytes(data)
        want = result(reader.PathSource(str(path)), "lines")
        assert result(reader.PathSource(str(path)), "bytes") == want, data
        for how in ("lines", "bytes"):
            pipe = io.BufferedReader(io.BytesIO(data))
            pipe.seekable = lambda: False   # a pipe: the first pass spools it
            got = result(reader.StreamSource(pipe), how)
            assert got == (want.replace(str(path), "input") if isinstance(want, str) else want), data
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:   # the line and offset of the first bad byte, universal newlines
            before = data[:e.start]
            line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
            assert f"line {line} (index {line - 1}) is not valid UTF-8 (byte 0x{data[e.start]:02x} at " \
                   f"offset {e.start})" in want, (data, want)
