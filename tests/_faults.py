"""A disk that fills up: diskio.write_all_at raising ENOSPC at its n-th call (the vector data of the
allennlp layout's writers go through it)."""
import errno
import os

from elmo_fast.corpus import diskio


def fail_nth_write(monkeypatch, n: int) -> list:
    """Patches diskio.write_all_at to fail with ENOSPC at call n (1-based); returns the list of the
    offsets of every call made, failed or not."""
    real, calls = diskio.write_all_at, []

    def full(f, parts, offset):
        calls.append(offset)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, parts, offset)

    monkeypatch.setattr(diskio, "write_all_at", full)
    return calls
