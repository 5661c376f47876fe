#!/usr/bin/env python3
"""Where the stubbed corpus job's time goes: one job in this process, its stages timed.

  python bench/timeline_pipeline.py [--sentences 20000] [--dir /dev/shm/timeline] [--reps 3]
      [--layout flat] [--format top] [--dtype-out float16]

Wraps the job's stages (the first pass, each window's tokens, each batch's character ids, the
window buffers, each batch placed, each data write, the layout's finish) with timers and prints,
per stage, how many calls, when the first and the last ran (seconds from the job's start) and how
long they took in all; and how many garbage collections ran during the job, per generation, with
their time. The model is bench_pipeline.py's stub. One job per rep, in this process (unlike
bench_pipeline.py's fresh processes: a collection falls where this process's allocations put it).
For finding gaps, not for speed claims.
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import RAW_NAME, StubModel, raw_write, unlink_all, write_corpus  # noqa: E402

from elmo_fast.corpus import batching, diskio, embed_corpus, layouts, pipeline  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=20_000)
    p.add_argument("--dir", default="/dev/shm/timeline")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--layout", default="flat")
    p.add_argument("--format", default="top")
    p.add_argument("--dtype-out", default="float16")
    args = p.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, f"corpus{args.sentences}.txt")
    tokens = write_corpus(src, args.sentences)
    out = os.path.join(args.dir, "out.h5")

    t0 = [0.0]
    events = []

    def timed(owner, name, label):
        real = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                events.append((label, t - t0[0], time.perf_counter() - t0[0]))
        setattr(owner, name, wrapper)

    timed(pipeline, "scan", "first pass")
    timed(batching, "_bucket_window", "window tokens")
    timed(batching.Window, "batch_ids", "char ids")
    timed(pipeline.WindowBuffers, "take", "buffer take")
    timed(pipeline, "place_batch", "place")
    timed(diskio.GuardedFile, "write_at", "data write")
    for cls in (layouts.FlatWriter, layouts.AllennlpWriter):
        timed(cls, "finish", "finish")

    collections_seen = []
    started = {}

    def on_gc(phase, info):
        if phase == "start":
            started["t"] = time.perf_counter()
        else:
            collections_seen.append((info["generation"], time.perf_counter() - started["t"]))

    gc.callbacks.append(on_gc)
    model = StubModel()
    for rep in range(args.reps):
        events.clear()
        collections_seen.clear()
        unlink_all([out, os.path.join(args.dir, RAW_NAME)])   # matched with the raw write (bench_pipeline)
        t0[0] = time.perf_counter()
        embed_corpus(model, src, out, args.format, batch_size=64, layout=args.layout,
                     dtype_out=args.dtype_out, progress=False, batching="bucket")
        end = time.perf_counter() - t0[0]
        layers, width = (3 if args.format == "all" else 1), (4 if args.dtype_out == "float32" else 2)
        payload = tokens * layers * 1024 * width
        raw = raw_write(args.dir, payload, free=[out], keep=True)
        by = collections.defaultdict(list)
        for label, a, b in events:
            by[label].append((a, b))
        print(f"rep {rep + 1}: job {end:.3f} s; raw write of its {payload / 1e6:.0f} MB of vectors "
              f"{raw:.3f} s (memory freed just before each)")
        for label, spans in by.items():
            print(f"  {label:13s} {len(spans):5d} calls  first {spans[0][0]:.3f}-{spans[0][1]:.3f}  "
                  f"last {spans[-1][0]:.3f}-{spans[-1][1]:.3f}  in all {sum(b - a for a, b in spans):.3f} s")
        per_gen = {g: [d for q, d in collections_seen if q == g] for g in (0, 1, 2)}
        print("  collections: " + ", ".join(f"gen {g}: {len(v)} ({sum(v):.3f} s)"
                                            for g, v in per_gen.items()))
    unlink_all([out, os.path.join(args.dir, RAW_NAME)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
