"""The conversion + write core of the flat --top float16 job alone (2026-12-02, record i; NOTES).

current: one thread converts each batch's top layer [64, 1, T, 1024] float32 -> float16 (one torch
op; T drawn like newswire lengths, 312 batches, ~1 GB out) and queues it; a second pwritev's each to
a new file in /dev/shm. staged: the dropped alternative (each sentence's rows gathered into a ring
of 256-row float16 staging chunks by torch.cat, each chunk pwritten). Seconds for the ~1 GB, 3 reps;
the raw write of the same bytes (bench_pipeline.raw_write) is printed beside them.

    python bench/results/convert-write-2026-12-02-i.py
"""
import os
import pathlib
import queue
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench_pipeline import raw_write  # noqa: E402

DIR = "/dev/shm/eb"
D = 1024
torch.set_num_threads(1)
x = torch.zeros(64, 3, 128, D)
lengths = np.clip(np.random.default_rng(0).lognormal(3.1, 0.5, 312).astype(int), 1, 127)


def _writer(fd, q, free=None):
    off = 0
    while True:
        o = q.get()
        if o is None:
            return
        os.pwritev(fd, [o.numpy()], off)
        off += o.numel() * 2
        if free is not None:
            free.put(o)


def _done(q, th, fd, t) -> float:
    """Ends the writer thread; the seconds since t (everything written); removes the file."""
    q.put(None)
    th.join()
    dt = time.perf_counter() - t
    os.close(fd)
    os.unlink(f"{DIR}/p.bin")
    return dt


def current() -> float:
    fd = os.open(f"{DIR}/p.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    q: queue.Queue = queue.Queue(8)
    th = threading.Thread(target=_writer, args=(fd, q))
    th.start()
    t = time.perf_counter()
    for T in lengths:
        q.put(x[:, -1:, :T].to(torch.float16))
    return _done(q, th, fd, t)


def staged(rows: int = 256, ring: int = 8) -> float:
    fd = os.open(f"{DIR}/p.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    free: queue.Queue = queue.Queue()
    for _ in range(ring):
        free.put(torch.empty(rows, D, dtype=torch.float16))
    q: queue.Queue = queue.Queue()
    th = threading.Thread(target=_writer, args=(fd, q, free))
    th.start()
    t = time.perf_counter()
    for T in lengths:
        src = x[:, 2, :T]
        buf, have, parts = free.get(), 0, []
        for p in (src[r] for r in range(64)):   # per-sentence slices [T, D]
            i = 0
            while i < len(p):
                take = min(rows - have, len(p) - i)
                parts.append(p[i:i + take])
                have += take
                i += take
                if have == rows:
                    torch.cat(parts, 0, out=buf)
                    q.put(buf)
                    buf, have, parts = free.get(), 0, []
        free.put(buf)
    return _done(q, th, fd, t)


if __name__ == "__main__":
    os.makedirs(DIR, exist_ok=True)
    nbytes = int(sum(64 * int(T) * D * 2 for T in lengths))
    for _ in range(3):
        print(f"current {current():.3f}  staged {staged():.3f}  raw write {raw_write(DIR, nbytes):.3f} s "
              f"({nbytes / 1e9:.2f} GB)")
