"""The first pass's per-line work on a block of the corpus's bytes: the launcher of our C++ kernel
(csrc/cpu/scan_lines.cpp, elmo_fast._cpu_kernels) and its Python reference.

    data: bytes, whole lines of UTF-8, each ended by \\n, \\r\\n or \\r (Python's universal newlines)
    -> (stripped: the bytes of "\\n".join(lines) + "\\n", lines stripped as str.strip() does;
        counts: int64 [lines], len(line.split()) of each)

`stripped` is what the input hash covers (reader.scan), the same bytes whichever path made them.
The kernel does every line in one pass without the GIL; the reference decodes and uses str methods
over the whole block (`split_lines`, shared with the reader's second pass). A block holding a
non-ASCII space (U+0085, U+00A0, ...: str.split() and str.strip() know them, the byte-level pass does
not) is done by the reference.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ..reference._cpu_gemm import kernels_or_reference
from .tokens import token_counts


def split_lines(text: str) -> List[str]:
    """text cut at its line ends (\\n, \\r\\n, \\r), not stripped; the last item is what follows the
    last line end ("" when text ends with one)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def last_line_end(data, end: Optional[int] = None) -> int:
    """Index of the last line end in data[:end] that surely ends a line (a final \\r may be the
    start of a \\r\\n whose \\n comes later: the line end before it), -1 if none."""
    end = len(data) if end is None else end
    cut = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end))
    if cut == end - 1 and cut >= 0 and data[cut] == 0x0D:
        cut = max(data.rfind(b"\n", 0, cut), data.rfind(b"\r", 0, cut))
    return cut


def scan_lines_ref(data) -> Tuple[bytes, np.ndarray]:
    """The reference (see the module doc)."""
    lines = [s.strip() for s in split_lines(bytes(data).decode("utf-8", "surrogatepass"))[:-1]]
    stripped = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass") if lines else b""
    return stripped, token_counts(lines)


def first_invalid_utf8_ref(data) -> int:
    """`first_invalid_utf8` by Python's strict decoder (the kernel's reference)."""
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return -1


def first_invalid_utf8(data, native: Optional[bool] = None) -> int:
    """The offset of the first byte of the first ill-formed UTF-8 sequence in data (bytes-like), as
    UnicodeDecodeError.start gives it, or -1: our C++ kernel (csrc/cpu/utf8_check.cpp: a scan, no
    str made) where it is built, else Python's decoder; native=True requires the kernel, False takes
    the decoder. A sequence cut off by the end of data is ill-formed."""
    mod = kernels_or_reference(native)
    if mod is None or not len(data):
        return first_invalid_utf8_ref(data)
    src = np.frombuffer(data, np.uint8)
    return int(mod.utf8_check(src.ctypes.data, len(src)))


def scan_lines(data, native: Optional[bool] = None):
    """(stripped, counts) of whole lines `data` (see the module doc): by the kernel where it runs
    here, else (or where the block holds a non-ASCII space) by the reference; native=True requires
    the kernel, False takes the reference. `stripped` is a bytes-like object (numpy uint8)."""
    n = len(data)
    if n and data[-1] not in (0x0A, 0x0D):
        raise ValueError("scan_lines: the block does not end with a line end")
    mod = kernels_or_reference(native)
    if mod is None or n == 0:
        return scan_lines_ref(data)
    src = np.frombuffer(data, np.uint8)
    out = np.empty(n, np.uint8)           # stripping and \r\n -> \n only shorten
    counts = np.empty(n, np.int64)        # a line holds at least its line end (only used pages are touched)
    lines, size = mod.scan_lines(src.ctypes.data, n, out.ctypes.data, counts.ctypes.data, n)
    if lines == -2:
        return scan_lines_ref(data)
    return out[:size], counts[:lines].copy()


__all__ = ["split_lines", "last_line_end", "scan_lines", "scan_lines_ref", "first_invalid_utf8",
           "first_invalid_utf8_ref"]
