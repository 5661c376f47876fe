"""The corpus reader: one whitespace-tokenised sentence per line, streamed, checked first.

A `Source` can be read any number of times, always from the start: a path (`.gz` decompressed), an
open binary or text file (seekable ones are re-read with seek, others are spooled to a temporary
file while the first pass reads them), or a sequence / iterator of sentence strings (iterators are
spooled likewise). `scan(source)` is the fast first pass: it checks the bytes are UTF-8 (Python's
incremental decoder, so a bad byte is reported with its line), counts lines and tokens, finds empty
lines and hashes what it read, before any model work; over a file's or a binary stream's bytes the
line work is one C++ pass per block (lines.py), with no Python string per line. `sentence_blocks`
is the streaming second pass.

Lines end at \\n, \\r\\n or \\r (Python's universal newlines); each is stripped; a leading
byte-order mark is dropped. Empty lines (after stripping): `empty_lines="error"` (allennlp's rule)
refuses them, "skip" drops them (sentence numbers then count only kept lines), "keep" keeps them as
zero-token sentences so that sentence i is line i.
"""
from __future__ import annotations

import array
import codecs
import gzip
import hashlib
import io
import os
import struct
import tempfile
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import IO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .lines import first_invalid_utf8, last_line_end, scan_lines, split_lines
from .tokens import token_counts

EMPTY_LINES = ("error", "skip", "keep")
BLOCK = 1 << 20  # bytes per read: large enough for disk speed, small enough to bound memory (each block
# lives as bytes, text and lines at once: ~8x its size)
_MAX_LISTED = 20
_SPOOL_IN_MEMORY = 32 << 20  # a piped input stays in memory up to this size, then goes to disk
_SENTENCE_BLOCK = 4096  # sentences given as Python strings: this many per block
_GROUP = 4096  # sentences (at least) per count that Scan keeps for `tokens_within`


class InputError(ValueError):
    """The input corpus cannot be embedded: missing or unreadable file, no sentences, empty lines,
    bytes that are not UTF-8, or (with sentence keys) sentences that cannot all be distinct keys."""


def _listed(indexes: List[int], total: Optional[int] = None) -> str:
    total = len(indexes) if total is None else total
    if total <= _MAX_LISTED:
        return str(indexes)
    return str(indexes[:_MAX_LISTED])[:-1] + f", ...] ({total} in all)"


def _utf8_error(name: str, line: int, byte: int, offset: int) -> InputError:
    return InputError(f"{name}: line {line} (index {line - 1}) is not valid UTF-8 (byte 0x{byte:02x} at "
                      f"offset {offset}); the input file must be UTF-8 text")


def _decode_blocks(chunks: Iterator[bytes], name: str) -> Iterator[str]:
    """Bytes blocks -> str blocks, UTF-8, naming the line and offset of the first bad byte."""
    return (text for _, text in _checked_chunks(chunks, name) if text)


def _checked_chunks(chunks: Iterator[bytes], name: str) -> Iterator[Tuple[bytes, str]]:
    """Each bytes block with its text (UTF-8, decoded incrementally: "" while a character is
    unfinished); a bad byte raises InputError naming its line and offset. Line ends are counted on
    the bytes, for the error's line number (one count of \\n where a block has no \\r)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0        # bytes read before this chunk
    lines_before = 0  # line ends before the bytes in `since`
    since: List[bytes] = []   # the bytes after the last line end counted (a final \r waits: it may start
    # a \r\n); in pieces, so that a long line is not copied at every block
    for chunk in chunks:
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:
            held = decoder.getstate()[0]  # at most 3 bytes of an unfinished character, the end of `since`
            before = b"".join(since)
            good = (before + chunk)[: len(before) - len(held) + e.start]
            raise _utf8_error(name, lines_before + _line_ends(good) + 1, (held + chunk)[e.start],
                              offset - len(held) + e.start) from None
        offset += len(chunk)
        cut = last_line_end(chunk)
        if cut < 0:
            since.append(chunk)
        else:
            before = b"".join(since)
            lines_before += (_line_ends(before) + _line_ends(chunk, cut + 1)
                             - (before.endswith(b"\r") and chunk.startswith(b"\n")))
            since = [chunk[cut + 1:]]
        yield chunk, text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        held = decoder.getstate()[0]
        raise _utf8_error(name, lines_before + _line_ends(b"".join(since)) + 1, held[0],
                          offset - len(held)) from None


def _line_ends(b: bytes, end: Optional[int] = None) -> int:
    """Line ends (\\n, \\r\\n, \\r) in b[:end]."""
    end = len(b) if end is None else end
    n = b.count(b"\n", 0, end)
    if b.find(b"\r", 0, end) >= 0:   # rare: a single count otherwise
        n += b.count(b"\r", 0, end) - b.count(b"\r\n", 0, end)
    return n


def _line_blocks(blocks: Iterator[str]) -> Iterator[List[str]]:
    """str blocks -> lists of stripped lines, line ends (\\n, \\r\\n, \\r) removed; no empty last line.
    One list per block: the splitting is str methods over the whole block, not Python per line."""
    carry, first = "", True
    for block in blocks:
        if first:
            first = False
            if block.startswith("\ufeff"):  # a byte-order mark is an encoding artefact, not a word
                block = block[1:]
        text, tail = carry + block, ""
        if text.endswith("\r"):  # a \\r\\n may be split between blocks
            text, tail = text[:-1], "\r"
        parts = split_lines(text)
        carry = parts.pop() + tail
        if parts:
            yield [p.strip() for p in parts]
    if carry:
        yield [(carry[:-1] if carry.endswith("\r") else carry).strip()]


_BOM = "\ufeff".encode("utf-8")


def _counted_blocks(chunks: Iterator[bytes], name: str) -> Iterator[Tuple[object, np.ndarray]]:
    """The first pass over bytes blocks, checked as UTF-8 (InputError naming the line): per block of
    whole lines, (its stripped lines joined and ended by \\n, as bytes; tokens per line), by
    `lines.scan_lines` (one C++ pass where it is built). The same as `Source.line_blocks` gives,
    without a Python string per line. The UTF-8 check (`lines.first_invalid_utf8`, a C++ scan where
    it is built) runs on each block of whole lines, which a line end never splits a character of;
    the line and offset of a bad byte count from the blocks before, as `_checked_chunks` gives them.
    A byte-order mark at the very start is dropped, as `_line_blocks` drops it."""
    held: List[bytes] = []   # the bytes since the last line end, in blocks (a long line is joined once)
    at = {"offset": 0, "lines": 0}   # input bytes and lines before the next block

    def scanned(data):
        bad = first_invalid_utf8(data)
        if bad >= 0:
            raise _utf8_error(name, at["lines"] + _line_ends(bytes(data[:bad])) + 1, data[bad],
                              at["offset"] + bad)
        view = data[len(_BOM):] if at["offset"] == 0 and bytes(data[:len(_BOM)]) == _BOM else data
        at["offset"] += len(data)
        return view

    for chunk in chunks:
        cut = last_line_end(chunk)
        if cut < 0:
            held.append(chunk)
            continue
        data = b"".join(held + [chunk]) if held else chunk
        cut += len(data) - len(chunk)
        held = [data[cut + 1:]] if cut + 1 < len(data) else []
        stripped, counts = scan_lines(scanned(memoryview(data)[:cut + 1]))
        at["lines"] += len(counts)
        yield stripped, counts
    rest = b"".join(held)
    if rest:   # a last line without its line end
        rest = bytes(scanned(rest))
        if rest:
            yield scan_lines(rest if rest.endswith(b"\r") else rest + b"\n")


def _as_bytes(chunk) -> bytes:
    """A chunk read from a stream as bytes (a text stream's str encoded, lone surrogates kept)."""
    return chunk if isinstance(chunk, (bytes, bytearray)) else chunk.encode("utf-8", "surrogatepass")


def _read_chunks(f: IO, size: Optional[int] = None) -> Iterator:
    while True:
        chunk = f.read(size or BLOCK)
        if not chunk:
            return
        yield chunk


class Source:
    """A re-readable corpus. `line_blocks()` yields the stripped lines from the start, every time, in
    lists of many lines; `lines()` one by one."""

    name: str = "input"

    def line_blocks(self) -> Iterator[List[str]]:
        raise NotImplementedError

    def lines(self) -> Iterator[str]:
        return chain.from_iterable(self.line_blocks())

    def counted_blocks(self) -> Optional[Iterator[Tuple[object, np.ndarray]]]:
        """The first pass's blocks from the bytes (`_counted_blocks`) where this source reads bytes;
        None otherwise (the first pass then works on `line_blocks`)."""
        return None

    def hash_update(self, h, item) -> None:
        h.update(item.encode("utf-8", "surrogatepass") + b"\n")

    def close(self) -> None:
        pass


class PathSource(Source):
    """A text file on disk, gzip-compressed when its name ends in .gz."""

    def __init__(self, path: str):
        self.path = path
        self.name = path
        if not os.path.exists(path):
            raise InputError(f"input file not found: {path}")
        if os.path.isdir(path):
            raise InputError(f"input file {path} is a directory")
        try:
            with self._open():
                pass
        except OSError as e:
            raise InputError(f"cannot read input file {path}: {e.strerror or e}") from None

    def _open(self) -> IO[bytes]:
        return gzip.open(self.path, "rb") if self.path.endswith(".gz") else open(self.path, "rb")

    def _chunks(self) -> Iterator[bytes]:
        try:
            with self._open() as f:
                yield from _read_chunks(f)
        except (OSError, EOFError) as e:  # unreadable, or a truncated / corrupt .gz
            raise InputError(f"cannot read input file {self.path}: "
                             f"{getattr(e, 'strerror', None) or e}") from None

    def line_blocks(self) -> Iterator[List[str]]:
        return _line_blocks(_decode_blocks(self._chunks(), self.name))

    def counted_blocks(self) -> Iterator[Tuple[object, np.ndarray]]:
        return _counted_blocks(self._chunks(), self.name)


class StreamSource(Source):
    """An open binary or text file. Seekable: re-read from where it was; otherwise the first pass
    spools what it reads (in memory up to 32 MB, then a temporary file) and later passes read that."""

    def __init__(self, f: IO):
        self.f = f
        self.name = str(getattr(f, "name", "input"))
        try:
            self.start = f.tell() if f.seekable() else None
        except (OSError, ValueError, AttributeError):
            self.start = None
        self.spool: Optional[IO] = None
        self.spooled = False

    def _raw(self) -> Iterator:
        if self.spooled:
            self.spool.seek(0)
            yield from _read_chunks(self.spool)
            return
        if self.start is not None:
            self.f.seek(self.start)
            yield from _read_chunks(self.f)
            return
        self.spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        for chunk in _read_chunks(self.f):
            self.spool.write(_as_bytes(chunk))
            yield chunk
        self.spooled = True

    def _blocks(self) -> Iterator[str]:
        raw = self._raw()
        try:
            first = next(raw)
        except StopIteration:
            return
        except UnicodeDecodeError:
            self._text_stream_utf8_error()
        if isinstance(first, (bytes, bytearray)) or self.spooled:
            def chunks():
                yield _as_bytes(first)
                for c in raw:
                    yield _as_bytes(c)
            yield from _decode_blocks(chunks(), self.name)
            return
        yield first
        try:
            yield from raw
        except UnicodeDecodeError:
            self._text_stream_utf8_error()

    def _text_stream_utf8_error(self):
        # A text stream cannot say which line; re-read the file's bytes when it has a path.
        path = getattr(self.f, "name", None)
        if isinstance(path, str) and os.path.isfile(path):
            list(PathSource(path).lines())
        raise InputError(f"{self.name} is not valid UTF-8; the input file must be UTF-8 text") from None

    def line_blocks(self) -> Iterator[List[str]]:
        return _line_blocks(self._blocks())

    def counted_blocks(self) -> Optional[Iterator[Tuple[object, np.ndarray]]]:
        if isinstance(self.f, io.TextIOBase) and not self.spooled:   # text: decoded by the stream
            return None
        return _counted_blocks(map(_as_bytes, self._raw()), self.name)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


class SentenceSource(Source):
    """Sentence strings from Python: a sequence (re-iterated) or any iterable (spooled, one record
    per sentence, while the first pass reads it). Sentences are stripped; they may hold no line."""

    def __init__(self, sentences: Iterable[str], name: str = "input"):
        self.name = name
        self.seq = sentences if isinstance(sentences, Sequence) else None
        self.it = None if self.seq is not None else iter(sentences)
        self.spool: Optional[IO] = None

    def line_blocks(self) -> Iterator[List[str]]:
        if self.seq is not None:
            return ([s.strip() for s in self.seq[k:k + _SENTENCE_BLOCK]]
                    for k in range(0, len(self.seq), _SENTENCE_BLOCK))
        return in_lists(self._replay() if self.it is None else self._consume())

    def _consume(self) -> Iterator[str]:
        it, self.it = self.it, None
        self.spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        for i, s in enumerate(it):
            if not isinstance(s, str):
                raise InputError(f"{self.name}: sentence {i} is a {type(s).__name__}, not a str")
            s = s.strip()
            b = s.encode("utf-8", "surrogatepass")
            self.spool.write(struct.pack("<Q", len(b)) + b)
            yield s

    def _replay(self) -> Iterator[str]:
        f = self.spool
        f.seek(0)
        while True:
            head = f.read(8)
            if not head:
                return
            (n,) = struct.unpack("<Q", head)
            yield f.read(n).decode("utf-8", "surrogatepass")

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def in_lists(items: Iterable, size: int = _SENTENCE_BLOCK) -> Iterator[list]:
    """items -> consecutive lists of up to `size` of them."""
    items = iter(items)
    while True:
        block = list(islice(items, size))
        if not block:
            return
        yield block


def open_source(input_file: Union[str, "os.PathLike[str]", IO, Iterable[str]], name: str = "input") -> Source:
    """A path, an open file, or sentence strings -> a re-readable Source."""
    if isinstance(input_file, Source):
        return input_file
    if isinstance(input_file, (str, bytes, os.PathLike)):
        return PathSource(os.fsdecode(input_file))
    if hasattr(input_file, "read"):
        return StreamSource(input_file)
    return SentenceSource(input_file, name)


@dataclass
class Scan:
    """What the first pass found. `sentences`: kept sentences (what gets embedded)."""

    name: str
    lines: int = 0
    sentences: int = 0
    tokens: int = 0
    empty: int = 0
    first_empty: List[int] = field(default_factory=list)
    sha256: str = ""
    window_tokens: int = 0  # the most tokens in one window of `window` sentences (scan's argument)
    group: int = 0          # per_group[k]: tokens of sentences k*group .. (k+1)*group - 1 (whole windows)
    per_group: "array.array" = field(default_factory=lambda: array.array("q"))

    def tokens_within(self, first: int, stop: int) -> int:
        """Tokens of the groups lying wholly within sentences first .. stop - 1 (the last group may be
        short): at most those sentences' tokens, all of them for a range of whole groups; 0 without
        groups."""
        if not self.group or stop <= first:
            return 0
        a = -(-first // self.group)
        b = len(self.per_group) if stop >= self.sentences else stop // self.group
        return int(sum(self.per_group[a:b])) if b > a else 0


def scan(source: Source, empty_lines: str = "error", sentence_keys: bool = False,
         window: Optional[int] = None) -> Scan:
    """The first pass: UTF-8, empty lines, empty file, (sentence_keys) distinct hdf5 keys; counts, an
    input hash and (window) the most tokens in one window of sentences k*window .. (k+1)*window - 1.
    Raises InputError naming the file and lines; reads, never writes."""
    if empty_lines not in EMPTY_LINES:
        raise ValueError(f"empty_lines must be one of {', '.join(EMPTY_LINES)}, got {empty_lines!r}")
    # token counts kept per group of whole windows (>= _GROUP sentences): 8 bytes a group, whatever the window
    s = Scan(source.name, group=window * -(-_GROUP // window) if window else 0)
    h = hashlib.sha256()
    keys: Optional[Dict[str, int]] = {} if sentence_keys else None
    in_window = 0  # tokens so far in the window the last sentence is in
    for stripped, counts, block in _first_pass_blocks(source, keys is not None):
        n_lines = len(counts)
        h.update(stripped)   # the same bytes as hashing each stripped line and its "\n" in turn
        empty = np.flatnonzero(counts == 0)   # a line is empty (stripped) exactly when it has no token
        if len(empty):
            s.empty += len(empty)
            room = _MAX_LISTED - len(s.first_empty)
            s.first_empty.extend((s.lines + empty[:max(room, 0)]).tolist())
            if empty_lines == "skip":
                block = block and [line for line in block if line]
                counts = counts[counts > 0]
        if keys is not None:
            for j, line in enumerate(block):
                if line or empty_lines == "keep":
                    _check_key(keys, line, s.sentences + j)
        if window is not None and len(counts):
            per = _range_sums(s.sentences, counts, window, in_window if s.sentences % window else 0)
            s.window_tokens = max(s.window_tokens, int(per.max()))
            in_window = int(per[-1])
            carried = s.per_group.pop() if s.sentences % s.group else 0
            s.per_group.frombytes(_range_sums(s.sentences, counts, s.group, carried).tobytes())
        s.lines += n_lines
        s.sentences += len(counts)
        s.tokens += int(counts.sum())
    s.sha256 = h.hexdigest()
    if s.lines == 0:
        raise InputError(f"{source.name} has no sentences (the file is empty); expected one "
                         "whitespace-tokenised sentence per line")
    if s.empty and empty_lines == "error":
        raise InputError(f"{source.name} contains empty lines at indexes {_listed(s.first_empty, s.empty)} "
                         f"(line numbers {_listed([i + 1 for i in s.first_empty], s.empty)}). Please remove "
                         "them, or pass --empty-lines skip|keep (empty_lines=).")
    if s.sentences == 0:
        raise InputError(f"{source.name} has no sentences (all {s.lines} lines are empty)")
    if keys is not None:
        _check_nesting(keys)
    return s


def _first_pass_blocks(source: Source,
                       with_lines: bool) -> Iterator[Tuple[object, np.ndarray, Optional[List[str]]]]:
    """Per block: (its stripped lines joined and ended by "\\n", UTF-8; tokens per line; the lines as
    str where `with_lines`, else None): from the bytes in one native pass where the source reads
    bytes, else from its lines."""
    fast = None if with_lines else source.counted_blocks()
    if fast is not None:
        for stripped, counts in fast:
            yield stripped, counts, None
        return
    for block in source.line_blocks():
        yield ("\n".join(block) + "\n").encode("utf-8", "surrogatepass"), token_counts(block), block


def _range_sums(first: int, counts: np.ndarray, size: int, carried: int) -> np.ndarray:
    """Tokens per global range of `size` sentences (k*size .. (k+1)*size - 1) of the sentences
    first, first + 1, ... with `counts` tokens; `carried`: the tokens the first range already holds
    from earlier blocks (0 when first starts a range)."""
    r = (first + np.arange(len(counts))) // size
    per = np.bincount(r - r[0], weights=counts).astype(np.int64)
    per[0] += carried
    return per


def sentences(source: Source, empty_lines: str = "error", start: int = 0,
              stop: Optional[int] = None) -> Iterator[Tuple[int, int, str]]:
    """The second pass: (sentence index, line index, stripped line) for sentences start..stop-1."""
    for k0, nums, texts in sentence_blocks(source, empty_lines, start, stop):
        yield from zip(range(k0, k0 + len(texts)), nums, texts)


def sentence_blocks(source: Source, empty_lines: str = "error", start: int = 0,
                    stop: Optional[int] = None) -> Iterator[Tuple[int, List[int], List[str]]]:
    """The second pass in blocks: (index of the block's first sentence, input line of each, stripped
    lines) for sentences start..stop-1, as `sentences` yields them one by one."""
    k, line0 = 0, 0
    for block in source.line_blocks():
        nums = range(line0, line0 + len(block))
        line0 += len(block)
        if empty_lines == "skip" and not all(block):
            nums = [i for i, line in zip(nums, block) if line]
            block = [line for line in block if line]
        a = max(start - k, 0)
        b = len(block) if stop is None else min(stop - k, len(block))
        if a < b:
            yield k + a, list(nums[a:b]), block[a:b]
        k += len(block)
        if stop is not None and k >= stop:
            return


# ------------------------------------------------------------------------------ sentence keys
def _key_error(i: int, s: str) -> InputError:
    return InputError(f"sentence at index {i} ({s!r}) cannot be an hdf5 key (it is made of '/' and '.'); "
                      "do not pass --use-sentence-keys / use_sentence_keys")


def _check_key(first: Dict[str, int], s: str, i: int) -> None:
    parts = [p for p in s.split("/") if p]
    if not parts or "." in parts:
        raise _key_error(i, s)
    key = "/".join(parts)
    if key in first:
        raise InputError(f"duplicate sentence at indexes {first[key]} and {i} ({s!r}): sentence keys must "
                         "be unique; to encode duplicate sentences, do not pass --use-sentence-keys / "
                         "use_sentence_keys (line indexes are then the keys)")
    first[key] = i


def _check_nesting(first: Dict[str, int]) -> None:
    for key, i in first.items():
        parts = key.split("/")
        for k in range(1, len(parts)):
            prefix = "/".join(parts[:k])
            if prefix in first:
                raise InputError(f"sentences at indexes {first[prefix]} and {i} cannot both be hdf5 keys: "
                                 f"{key!r} would nest inside {prefix!r} ('/' separates hdf5 groups); do not "
                                 "pass --use-sentence-keys / use_sentence_keys")


def check_sentence_keys(sentences: Sequence[str]) -> None:
    """With sentences as hdf5 keys, every sentence must name a distinct dataset ('/' nests groups)."""
    first: Dict[str, int] = {}
    for i, s in enumerate(sentences):
        _check_key(first, s, i)
    _check_nesting(first)


# ------------------------------------------------------------------------------ compatibility
def check_sentences(sentences: Sequence[str], name: str = "input") -> None:
    """allennlp's checks on stripped lines: at least one, and none empty."""
    scan(SentenceSource(list(sentences), name))


def read_sentences(input_file: Union[IO, str, "os.PathLike[str]"]) -> List[str]:
    """The stripped lines of a corpus, checked, as a list (the whole corpus in memory: for small
    inputs and compatibility; `embed_corpus` streams instead).

    input_file: a path, or an open text or binary file (read to its end, not closed). Raises
    InputError, naming the file and the offending lines, for a missing or unreadable file, an empty
    file, empty lines, or bytes that are not UTF-8. A leading byte-order mark is dropped.
    """
    source = open_source(input_file)
    try:
        lines = list(source.lines())
        scan(SentenceSource(lines, source.name))
        return lines
    finally:
        source.close()


__all__ = ["InputError", "Source", "PathSource", "StreamSource", "SentenceSource", "open_source", "Scan",
           "scan", "sentences", "sentence_blocks", "check_sentences", "check_sentence_keys", "read_sentences",
           "EMPTY_LINES"]
