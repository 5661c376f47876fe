"""Write-then-rename: a file appears complete or not at all.

Temporary names carry the writer's pid (`.NAME.PID.XXXXXX.tmp`), so a later run can tell the
leftovers of a dead run (killed with SIGKILL, a power cut) from the file of a live one.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from typing import Callable, Iterator, List, Optional, Tuple

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_name(dest: str) -> str:
    """A fresh temporary path beside `dest`, naming this process."""
    folder, base = os.path.split(os.path.abspath(dest))
    return os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(dest: str) -> List[Tuple[str, int]]:
    """(path, pid) of temporary files beside `dest` left by processes that no longer run."""
    folder, base = os.path.split(os.path.abspath(dest))
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for n in names:
        m = _TMP.match(n)
        if m and m.group("name") == base and not pid_alive(int(m.group("pid"))):
            found.append((os.path.join(folder, n), int(m.group("pid"))))
    return found


def remove_stale_temporaries(dest: str, notice: Optional[Callable[[str], None]] = None) -> int:
    """Removes the temporaries of dead runs beside `dest` (saying so through `notice`); never a live
    run's. Returns how many were removed."""
    n = 0
    for path, pid in stale_temporaries(dest):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            n += 1
            if notice:
                notice(f"removed {path}, a temporary file left by an earlier run (pid {pid}) "
                       "that no longer runs")
    return n


def finish(tmp: str, dest: str) -> None:
    """Gives `tmp` the permissions `dest` has (or the umask's defaults) and renames it over `dest`."""
    try:
        mode = stat.S_IMODE(os.stat(dest).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_path(dest: str, suffix: str = ".tmp") -> Iterator[str]:
    """Yields a temporary path beside `dest`; on a clean exit it is renamed over `dest` (atomic on
    one filesystem) keeping the permissions of the file it replaces; on any error or interrupt it
    is removed and `dest` is left as it was."""
    tmp = temporary_name(dest)
    if suffix != ".tmp":
        tmp = tmp[: -len(".tmp")] + suffix
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        yield tmp
        finish(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
