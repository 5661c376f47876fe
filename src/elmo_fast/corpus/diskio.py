"""Output files that fail cleanly: a full disk or an I/O error is one exception, never a crash.

h5py's own file driver reports a failed write from deep inside HDF5 (and, on a full disk, can crash
in `File.close` after hundreds of "Exception ignored" messages). Here HDF5 writes through a Python
file object (`driver="fileobj"`) that records the first failure, drops every later write (the file
is deleted anyway), and lets the caller raise `OutputWriteError`, naming the user's output path.
"""
from __future__ import annotations

import errno
import os
from typing import IO, Optional

import h5py

# Small: it coalesces HDF5's small metadata writes, while vector data (larger) goes straight to the
# kernel; a large buffer would first copy every dataset smaller than itself (the allennlp layout's
# one dataset per sentence: about twice as slow with 1 MB as with 4 KB, bench/NOTES.md).
_BUFFER = 4096


class OutputWriteError(OSError):
    """Writing the output failed (no space left, quota, I/O error): one line naming the output."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def describe_failure(exc: OSError, output: str) -> OutputWriteError:
    """An OSError met while writing `output` -> the one-line error the user sees."""
    if isinstance(exc, OutputWriteError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return OutputWriteError(exc.errno, f"{what} writing {output}; free some space and run again with "
                                "--resume (completed pieces, if any, are kept)")
    reason = exc.strerror or str(exc)
    return OutputWriteError(exc.errno or errno.EIO, f"cannot write {output}: {reason}")


_IOV_MAX = 1024   # buffers one pwritev takes (Linux's IOV_MAX)


def write_all_at(f, parts, offset: int) -> None:
    """os.pwritev of the buffers `parts` (any number) at `offset` in file f, continued after a short
    write."""
    fd = f.fileno()
    views = [v for v in (memoryview(b).cast("B") for b in parts) if len(v)]
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i:i + _IOV_MAX], offset)
        offset += n
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]


def free_bytes(f) -> Optional[int]:
    """Bytes this process may still write on file f's file system (statvfs: the blocks free to
    unprivileged users, or all free blocks for root, who may take the reserved ones); None where
    that is not known."""
    try:
        st = os.fstatvfs(f.fileno())
    except (OSError, AttributeError):
        return None
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    return (st.f_bfree if root else st.f_bavail) * st.f_frsize


_COPY_FALLBACK = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def copy_range(f, src: int, src_offset: int, n: int, offset: int) -> None:
    """n bytes at src_offset of the file descriptor src to offset in file f: os.copy_file_range (the
    kernel copies, no pass through this process) where the file systems allow it, else pread and
    pwrite in 16 MB pieces. A source that ends early is an EIO."""
    fd = f.fileno()
    fast = hasattr(os, "copy_file_range")
    while n:
        k = 0
        if fast:
            try:
                k = os.copy_file_range(src, fd, min(n, 1 << 30), src_offset, offset)
            except OSError as e:
                if e.errno not in _COPY_FALLBACK:
                    raise
                fast = False
        if not fast:
            data = os.pread(src, min(n, 16 << 20), src_offset)
            if data:
                write_all_at(f, [data], offset)
            k = len(data)
        if k == 0:
            raise OSError(errno.EIO, "the file copied from ended early")
        n, src_offset, offset = n - k, src_offset + k, offset + k


class GuardedFile:
    """A binary file for h5py's fileobj driver. After the first failed write or flush it keeps
    `failure` (an OSError with the path) and ignores further writes, so HDF5 never sees an error."""

    def __init__(self, path: str, mode: str = "w+b", opener=open):
        self.path = path
        self.f: IO[bytes] = opener(path, mode, buffering=_BUFFER) if opener is open else opener(path, mode)
        self.failure: Optional[OSError] = None
        self._pos = 0

    def _fail(self, e: OSError) -> None:
        if self.failure is None:
            e.filename = e.filename or self.path
            self.failure = e

    def record(self, e: OSError) -> None:
        """Keeps e as this output's failure, like a failed write of its own (a write elsewhere for
        the same output, e.g. a side file, failed)."""
        self._fail(e)

    # -- the file-object protocol h5py uses
    def write(self, b) -> int:
        n = len(memoryview(b).cast("B"))
        if self.failure is None:
            try:
                self.f.write(b)
            except OSError as e:
                self._fail(e)
        self._pos += n
        return n

    def write_at(self, offset: int, parts) -> None:
        """Writes the buffers `parts` one after the other at `offset` (vector data that HDF5 gave an
        address to, h5direct.py), without the file position: safe in another thread beside HDF5's
        own seeks and writes (other bytes of the file). A failure is kept like write's."""
        if self.failure is None:
            try:
                write_all_at(self.f, parts, offset)
            except OSError as e:
                self._fail(e)

    def check_room(self, n: int) -> None:
        """Fails (ENOSPC, kept like a failed write's) when the file system has no room for the file
        to grow to n bytes (`free_bytes`; nothing is checked where that is not known)."""
        if self.failure is None:
            free = free_bytes(self.f)
            try:
                grow = n - os.fstat(self.f.fileno()).st_size
            except OSError:
                grow = n
            if free is not None and grow > free:
                self._fail(OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {grow} more bytes needed, "
                                   f"{free} free", self.path))

    def copy_at(self, offset: int, src: int, src_offset: int, n: int) -> None:
        """Copies n bytes at src_offset of the file descriptor src to offset (`copy_range`), like
        write_at: no file position, a failure kept."""
        if self.failure is None:
            try:
                copy_range(self.f, src, src_offset, n, offset)
            except OSError as e:
                self._fail(e)

    def read(self, n: int = -1) -> bytes:
        if self.failure is not None:
            return b""
        data = self.f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        if self.failure is not None:
            return 0
        n = self.f.readinto(b)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        if self.failure is None:
            try:
                self._pos = self.f.seek(offset, whence)
                return self._pos
            except OSError as e:  # a buffered file flushes on seek
                self._fail(e)
        self._pos = offset if whence == 0 else self._pos + offset
        return self._pos

    def tell(self) -> int:
        return self._pos if self.failure is not None else self.f.tell()

    def truncate(self, size: Optional[int] = None) -> int:
        if self.failure is None:
            try:
                return self.f.truncate(size)
            except OSError as e:
                self._fail(e)
        return size or 0

    def flush(self) -> None:
        if self.failure is None:
            try:
                self.f.flush()
            except OSError as e:
                self._fail(e)

    def close(self) -> None:
        try:
            self.flush()
            if self.failure is None:
                os.fsync(self.f.fileno())
        except OSError as e:
            self._fail(e)
        finally:
            try:
                self.f.close()
            except OSError as e:
                self._fail(e)

    def check(self, output: str) -> None:
        """Raises OutputWriteError for the first failure seen, naming `output`."""
        if self.failure is not None:
            raise describe_failure(self.failure, output)


class H5Output:
    """An hdf5 file being written through a GuardedFile: `with H5Output(path, output) as (f, guard)`.
    On leaving, the file is closed; a failure seen at any point raises OutputWriteError.

    create=False: the file starts empty, with no h5py.File (h5 is None): its writer makes the file
    itself and may later set `h5` to an h5py.File on it (h5pack.PackedFile.open_h5)."""

    def __init__(self, path: str, output: str, libver: str = "latest", create: bool = True):
        self.output = output
        self.guard = GuardedFile(path)
        self.h5 = h5py.File(self.guard, "w", libver=libver) if create else None

    def check(self) -> None:
        self.guard.check(self.output)

    def close(self) -> None:
        try:
            if self.h5 is not None and self.h5.id.valid:
                self.h5.close()
        finally:
            self.guard.close()
        self.check()

    def abort(self) -> None:
        """Closes without caring whether the data reached the disk (the file is being deleted)."""
        self.guard.failure = self.guard.failure or OSError(errno.ECANCELED, "aborted", self.guard.path)
        try:
            if self.h5 is not None and self.h5.id.valid:
                self.h5.close()
        except Exception:  # noqa: BLE001 - nothing written now matters
            pass
        try:
            self.guard.f.close()
        except OSError:
            pass

    def __enter__(self):
        return self.h5

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
