#!/usr/bin/env python3
"""A/B of the stubbed corpus job between source trees: fresh processes, interleaved, same corpus.

  python bench/ab_pipeline.py --tree base=/path/to/old/checkout --tree new=. \\
      [--sentences 20000] [--reps 3] [--warm-gb 6] [--dir /dev/shm/ab] flat:top:float16 allennlp:all:float32

Each CASE is layout:format:dtype-out. Per case and rep every tree runs the job once
(`bench_pipeline.py _child --child stub`, with PYTHONPATH=<tree>/src, so the tree's own elmo_fast is
imported; the order rotated from rep to rep, A B C, B C A, C A B, ..., so that each tree runs
in each place as often), then the same bytes are written raw to the same folder. Prints
the medians, each as a ratio to the raw write's (and the best run's to the best raw write's: less
touched by this VM's noise), and new/base when trees named so exist. The first
write of --warm-gb GB (untimed) takes the VM's first touch of fresh memory out of the runs. Every
job and raw write writes into memory freed just before its timer (bench_pipeline.py's module doc;
`--unmatched`: each unlinks its own file when done, as before the eleventh session). A tree
without its compiled extensions is fine: the stub needs none.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_pipeline import RAW_NAME, cores_check, matched_args, raw_write, unlink_all, write_corpus  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="+", help="layout:format:dtype-out, e.g. flat:top:float16")
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH of a checkout (repeat)")
    p.add_argument("--sentences", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warm-gb", type=int, default=6)
    p.add_argument("--dir", default="/dev/shm/ab")
    p.add_argument("--unmatched", action="store_true",
                   help="each job and raw write unlinks its own file when done (see the doc)")
    args = p.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree)
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, f"corpus{args.sentences}.txt")
    tokens = write_corpus(src, args.sentences)
    out = os.path.join(args.dir, "out.h5")
    raw_write(args.dir, args.warm_gb << 30, keep=not args.unmatched)
    names = list(trees)
    for case in args.cases:
        layout, fmt, dtype = case.split(":")
        secs = {k: [] for k in names}
        raws = []
        payload = tokens * (3 if fmt == "all" else 1) * 1024 * (4 if dtype == "float32" else 2)
        if not args.unmatched:   # untimed: the case's first job, too, frees a payload's worth of memory
            raw_write(args.dir, payload, free=[out], keep=True)
        for rep in range(args.reps):
            for k in names[rep % len(names):] + names[:rep % len(names)]:   # each tree in each place in turn
                env = dict(os.environ, PYTHONPATH=str(pathlib.Path(trees[k]).resolve() / "src"))
                cmd = [sys.executable, str(HERE / "bench_pipeline.py"), "_child", "--child", "stub",
                       "--input", src, "--output", out, "--layout", layout, "--format", fmt,
                       "--dtype-out", dtype, "--batch-size", str(args.batch_size),
                       *matched_args(args.dir, out, args.unmatched)]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if r.returncode:
                    sys.exit(f"{k} failed on {case}: {r.stderr.strip()[-2000:]}")
                secs[k].append(json.loads(r.stdout.strip().splitlines()[-1])["seconds"])
            raws.append(raw_write(args.dir, payload, free=[out], keep=not args.unmatched))
        raw = statistics.median(raws)
        med = {k: statistics.median(v) for k, v in secs.items()}
        best = {k: min(v) for k, v in secs.items()}
        line = " ".join(f"{k} {tokens / med[k]:,.0f} tok/s ({raw / med[k]:.2f}x raw; "
                        f"best {min(raws) / best[k]:.2f}x)" for k in names)
        if "base" in med and "new" in med:
            line += f"  new/base {med['base'] / med['new']:.2f} (best {best['base'] / best['new']:.2f})"
        line += f"  cores after {cores_check():.2f}"
        print(f"{case} {line}  raw {tokens / raw:,.0f} tok/s  ({args.reps} reps, {tokens} tokens)",
              flush=True)
        every = {**secs, "raw": raws}
        print("  seconds: " + json.dumps({k: [round(x, 3) for x in v] for k, v in every.items()}), flush=True)
    unlink_all([out, os.path.join(args.dir, RAW_NAME)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
