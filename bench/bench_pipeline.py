#!/usr/bin/env python3
"""The corpus job's host side and the end-to-end CPU job (issue 8 item 6, issue 9 item 3).

  python bench/bench_pipeline.py stub   [--quick] [--dir D]   host-side ceiling, model stubbed
  python bench/bench_pipeline.py e2e    [--quick]             real CPU job vs allennlp's embed_file
  python bench/bench_pipeline.py memory [--quick]             peak RSS: 5 k vs 100 k sentences
  python bench/bench_pipeline.py pieces [--quick]             the job in 1 piece vs in 4 (+ merge)
  python bench/bench_pipeline.py long-line [--long-line T]     peak RSS of one long line (CPU: about an hour)
  python bench/bench_pipeline.py all    [--quick] [--json F]

stub: the model is replaced by zeros of the right shape (original model: 3 layers x 1024), the corpus
has the fixture's sentence lengths (tokens drawn from its vocabulary), and every layout x format
(--top / --all) x dtype-out runs through `elmo_fast.corpus.embed_corpus` into --dir (put it on the
disk you care about; a RAM disk measures the host side alone). Beside each, in the same run, the
same number of bytes is written sequentially to the same folder (os.write of 8 MB blocks, then a
close without fsync), and the ratio job / raw is reported. The job fsyncs each piece it completes
(free on a RAM disk; on a real disk its time then holds the wait for the disk, which the raw write's
does not: on this VM's ext4, 0.15x). Each job runs in a fresh
process, as `elmo-fast embed` does, followed by its raw write (--stub-reps times; medians). One
untimed write of the largest payload comes first, so that neither side pays alone for a VM's first
touch of fresh memory. Each side writes into memory freed just before its timer starts (the raw
write's file is unlinked by the next job's process once it is ready to start, the job's output by
the raw write): where freed memory goes back to a VM's host a moment later (free page reporting),
a write into memory freed seconds ago ran 1.3-2x slower (bench/NOTES.md, issue 8, eleventh
session), and the job, a process start after the last raw write, took that penalty alone until
then. `--unmatched` measures the old way (each side unlinks its own file when done). After each
row, `cores_check` (two CPU-bound processes against one: 2.00 = two whole cores) says roughly how
much of its second vCPU this VM's host lent meanwhile: the job needs both, the raw write one.
e2e: the original architecture with random weights (elmo_fast.synthetic) on the CPU: `elmo-fast
embed`'s pipeline against allennlp 0.9.0's own `ElmoEmbedder.embed_file` (loaded from the wheel by
/work/shared/tools/allennlp_elmo.py; skipped with the reason when that is not usable), same corpus,
same batch size, same run.
memory / long-line: each measurement is a fresh subprocess reporting
resource.getrusage(RUSAGE_SELF).ru_maxrss: (memory) the stubbed job on 5 k and on 100 k sentences
(peak memory must not grow with the corpus); (long-line) the real model on one long line (100 k
tokens by default, original architecture; the LSTM's time chunking bounds it).
pieces: the stubbed job on --sentences (allennlp --top float32, flat --top float16), in one piece and
in 4 (the first three hashed, then all merged into the output), each in a fresh process, --stub-reps
times (medians): the cost of a run's resume checkpoints. `all` runs every mode.

Numbers are only meaningful on a quiet machine; this script records nothing by itself (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURE_SENTENCES = SHARED / "fixtures" / "elmo" / "sentences.json"
ALLENNLP_TOOL = SHARED / "tools" / "allennlp_elmo.py"


# --------------------------------------------------------------------------------------- corpus
def fixture_lengths_and_vocab():
    if FIXTURE_SENTENCES.exists():
        sents = [s for group in json.loads(FIXTURE_SENTENCES.read_text()) for s in group]
        toks = [s.split() for s in sents]
        return [len(t) for t in toks], sorted({w for t in toks for w in t})
    # without the fixture: a newswire-like length distribution (mean ~25 tokens)
    rng = np.random.default_rng(0)
    return list(np.clip(rng.lognormal(3.1, 0.5, 200).astype(int), 1, 120)), [f"w{i}" for i in range(5000)]


def write_corpus(path: str, n: int, seed: int = 0) -> int:
    """n sentences with the fixture's lengths; returns the token count."""
    lengths, vocab = fixture_lengths_and_vocab()
    rng = np.random.default_rng(seed)
    tokens = 0
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            k = int(lengths[rng.integers(len(lengths))])
            f.write(" ".join(vocab[j] for j in rng.integers(len(vocab), size=k)) + "\n")
            tokens += k
    return tokens


# ----------------------------------------------------------------------------------------- stub
class StubModel:
    """The model stage's interface (elmo_fast.corpus.EmbedderModel) returning zeros of the right shape."""

    stateful = False
    device = torch.device("cpu")

    def __init__(self, num_layers: int = 3, dim: int = 1024):
        self.num_layers, self.dim = num_layers, dim
        # made here, before the job, as a model's weights and workspace are (at the first call it put
        # 0.04 s of page faults for 100 MB inside the timed job)
        self.buf = torch.zeros(64, num_layers, 128, dim)

    def __call__(self, ids):
        # a GPU model's output costs the host nothing but reading it: one zero buffer, reused
        B, T = ids.shape[0], ids.shape[1]
        if self.buf.shape[0] < B or self.buf.shape[2] < T:
            self.buf = torch.zeros(max(B, 64), self.num_layers, max(T, 128), self.dim)
        mask = (ids[:, :, 0] > 0).long()
        return self.buf[:B, :, :T], mask

    def identity(self):
        return {"model_sha256": "stub", "options": {}, "mode": "stateless", "warm_start": False,
                "compute_dtype": "float32", "device_type": "cpu"}


RAW_NAME = ".raw_write.bin"


def unlink_all(paths: Sequence[str]) -> None:
    """Removes those of `paths` that exist."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def raw_write(folder: str, nbytes: int, free: Sequence[str] = (), keep: bool = False) -> float:
    """Seconds to write nbytes sequentially to a new file in folder: `free` unlinked first, just
    before the timer starts (the memory the write then takes was freed a moment before); the file
    is left for the next measurement to free where `keep`, else removed."""
    block = np.zeros(8 << 20, np.uint8).tobytes()
    path = os.path.join(folder, RAW_NAME)
    unlink_all([path, *free])
    t = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(block[: min(left, len(block))])
    secs = time.perf_counter() - t
    if not keep:
        os.unlink(path)
    return secs


_SPIN = "x = 0\nfor i in range(8_000_000):\n    x += i"


def cores_check() -> float:
    """How many cores' worth of work two CPU-bound processes get at once, against one alone (2.0: two
    whole cores; this VM's host lends its second vCPU unevenly: 1.4-2.0 seen within an hour, and the
    job needs both). Takes ~1.5 s."""
    def spin(n: int) -> float:
        t = time.perf_counter()
        ps = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE) for _ in range(n)]
        for q in ps:
            q.communicate()
        return time.perf_counter() - t
    alone = spin(1)
    return 2 * alone / spin(2)


def matched_args(folder: str, out: str, unmatched: bool) -> List[str]:
    """The stub child's arguments for a measurement matched with the raw write's (module doc): it
    unlinks the last raw write's file and the last job's output just before its timer, and keeps
    its own output for the next raw write to unlink."""
    if unmatched:
        return []
    return ["--free", os.path.join(folder, RAW_NAME), "--free", out, "--keep-output"]


def bench_stub(args) -> List[Dict]:
    n = 2_000 if args.quick else args.sentences
    reps = 1 if args.quick else args.stub_reps
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        src = os.path.join(d, "corpus.txt")
        tokens = write_corpus(src, n)
        # One untimed write of the largest payload first: a VM backs guest memory on first touch, so
        # whichever of job and raw write first takes fresh pages (tmpfs) would pay for it alone.
        raw_write(d, tokens * 3 * 1024 * 4, keep=not args.unmatched)
        for layout in ("flat", "allennlp"):
            for fmt in ("top", "all"):
                for dtype_out in ("float32", "float16", "bfloat16"):
                    if args.quick and layout == "allennlp" and dtype_out != "float32":
                        continue
                    out = os.path.join(d, "out.h5")
                    payload = (tokens * (3 if fmt == "all" else 1) * 1024
                               * (4 if dtype_out == "float32" else 2))
                    jobs, raws = [], []
                    if not args.unmatched:   # untimed: the row's first job, too, frees a payload's worth
                        raw_write(d, payload, free=[out], keep=True)
                    for _ in range(reps):  # each job in a fresh process (as `elmo-fast embed` runs), then
                        # the raw write: within one process later jobs ran up to 2x slower (NOTES.md)
                        r = _measure("stub", src, out, ["--layout", layout, "--format", fmt,
                                                        "--dtype-out", dtype_out, "--batch-size",
                                                        str(args.batch_size),
                                                        *matched_args(d, out, args.unmatched)])
                        jobs.append(r["seconds"])
                        size = r["file_bytes"]
                        raws.append(raw_write(d, payload, free=[out], keep=not args.unmatched))
                    secs, raw = statistics.median(jobs), statistics.median(raws)
                    cores = cores_check()   # after the row: what the host lent meanwhile, roughly
                    row = dict(bench="stub", layout=layout, format=fmt, dtype_out=dtype_out, sentences=n,
                               cores_after=cores,
                               tokens=tokens, seconds=secs, tokens_per_s=tokens / secs, file_bytes=size,
                               payload_bytes=payload, raw_seconds=raw, raw_tokens_per_s=tokens / raw,
                               ratio_to_raw=raw / secs, job_seconds_each=jobs, raw_seconds_each=raws)
                    rows.append(row)
                    print(f"stub {layout:8} --{fmt:3} {dtype_out:8} "
                          f"{row['tokens_per_s']:>12,.0f} tok/s   raw write "
                          f"{row['raw_tokens_per_s']:>12,.0f} tok/s   "
                          f"ratio {row['ratio_to_raw']:.2f}   cores after {cores:.2f}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ e2e
def load_allennlp_embedder():
    """allennlp 0.9.0's ElmoEmbedder class (commands/elmo.py from the wheel), or raises with a reason."""
    import types
    import zipfile

    sys.path.insert(0, str(ALLENNLP_TOOL.parent))
    import allennlp_elmo  # noqa: E402

    wheel = allennlp_elmo.find_wheel(download=False)
    allennlp_elmo.load_modules(wheel)
    from tqdm import tqdm as _tqdm

    tq = types.ModuleType("allennlp.common.tqdm")
    tq.Tqdm = type("Tqdm", (), {"tqdm": staticmethod(lambda *a, **k: _tqdm(*a, **{"disable": True, **k}))})
    allennlp_elmo._register("allennlp.common.tqdm", tq)
    sys.modules["allennlp.common.util"].prepare_global_logging = lambda *a, **k: None
    sub = types.ModuleType("allennlp.commands.subcommand")
    sub.Subcommand = type("Subcommand", (), {})
    allennlp_elmo._pkg("allennlp.commands")
    allennlp_elmo._register("allennlp.commands.subcommand", sub)
    src = zipfile.ZipFile(wheel).read("allennlp/commands/elmo.py").decode()
    mod = allennlp_elmo._exec_source("allennlp.commands.elmo", src, f"{wheel}/allennlp/commands/elmo.py")
    return mod.ElmoEmbedder


def bench_e2e(args) -> List[Dict]:
    """Both embed_file jobs on the same corpus, `--e2e-reps` times each, interleaved (ours, allennlp,
    allennlp, ours, ...) so the VM's drift hits both; each embedder is built once, before its first
    run, and the first run is timed too (it includes our weight packing): medians and every time."""
    from elmo_fast import ElmoEmbedder
    from elmo_fast.synthetic import make_options, write_model

    arch = "small" if args.quick else args.arch
    n = 16 if args.quick else args.e2e_sentences
    reps = 1 if args.quick else max(1, args.e2e_reps)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        opts, weights = write_model(os.path.join(d, "model"), make_options(arch), seed=0)
        src = os.path.join(d, "corpus.txt")
        tokens = write_corpus(src, n, seed=1)
        ours = ElmoEmbedder(opts, weights, stateful=True, progress=False)

        def run_ours(out):
            ours.embed_file(src, out, "all", batch_size=args.batch_size, progress=False)

        runs = {"elmo_fast": run_ours}
        skipped = None
        try:
            AllenEmbedder = load_allennlp_embedder()
            theirs = AllenEmbedder(opts, weights, cuda_device=-1)

            def run_theirs(out):
                with open(src, encoding="utf-8") as f:
                    theirs.embed_file(f, out, "all", batch_size=args.batch_size)
            runs["allennlp"] = run_theirs
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            skipped = f"allennlp's ElmoEmbedder is not usable here: {type(e).__name__}: {e}"
            print(f"e2e  allennlp: skipped ({skipped})", flush=True)
        times: Dict[str, List[float]] = {k: [] for k in runs}
        for r in range(reps):
            for k in (list(runs) if r % 2 == 0 else list(reversed(list(runs)))):
                out = os.path.join(d, f"{k}.h5")
                t = time.perf_counter()
                runs[k](out)
                times[k].append(time.perf_counter() - t)
                os.unlink(out)
                print(f"e2e  {k:9s} {arch} run {r + 1}: {tokens / times[k][-1]:,.0f} tok/s "
                      f"({times[k][-1]:.1f} s)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours_s = med["elmo_fast"]
    rows = [dict(bench="e2e", impl="elmo_fast", arch=arch, sentences=n, tokens=tokens, seconds=ours_s,
                 times_s=times["elmo_fast"], tokens_per_s=tokens / ours_s, threads=torch.get_num_threads())]
    if skipped:
        rows.append(dict(bench="e2e", impl="allennlp", skipped=skipped))
        return rows
    a = med["allennlp"]
    rows.append(dict(bench="e2e", impl="allennlp", arch=arch, sentences=n, tokens=tokens, seconds=a,
                     times_s=times["allennlp"], tokens_per_s=tokens / a, speedup=a / ours_s))
    print(f"e2e  median of {reps}: elmo_fast {tokens / ours_s:,.0f} tok/s, allennlp {tokens / a:,.0f} "
          f"tok/s; speed-up {a / ours_s:.2f}x", flush=True)
    return rows


# --------------------------------------------------------------------------------------- memory
def _child(args) -> None:
    """One measured job in this fresh process; prints {"peak_rss_mb": ...}."""
    from elmo_fast.corpus import embed_corpus

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.child == "stub":
        model = StubModel()
    else:
        from elmo_fast import ElmoEmbedder
        from elmo_fast.corpus import EmbedderModel

        model = EmbedderModel(ElmoEmbedder(args.options, args.weights, stateful=False, progress=False))
    extra = {} if args.piece_sentences is None else {"piece_sentences": args.piece_sentences}
    unlink_all(args.free)   # just before the timer: the memory the job takes was freed a moment ago
    t = time.perf_counter()
    embed_corpus(model, args.input, args.output, args.format, batch_size=args.batch_size,
                 batch_tokens=args.batch_tokens, layout=args.layout, dtype_out=args.dtype_out, progress=False,
                 batching="bucket", **extra)
    secs = time.perf_counter() - t
    size = os.path.getsize(args.output)
    if not args.keep_output:
        os.unlink(args.output)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": secs, "file_bytes": size}))


def _measure(kind: str, src: str, out: str, extra: List[str]) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_child", "--child", kind, "--input", src,
           "--output", out, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"measurement failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_memory(args) -> List[Dict]:
    rows = []
    small, large = (2_000, 8_000) if args.quick else (5_000, 100_000)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for n in (small, large):
            src = os.path.join(d, f"c{n}.txt")
            tokens = write_corpus(src, n)
            r = _measure("stub", src, os.path.join(d, "o.h5"), [])
            rows.append(dict(bench="memory", job="stub", sentences=n, tokens=tokens, **r))
            print(f"memory stub {n:>7} sentences: peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        ratio = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        rows.append(dict(bench="memory", job="stub", growth=ratio))
        print(f"memory stub: {large} / {small} sentences peak RSS ratio {ratio:.3f} (target <= 1.10)",
              flush=True)
    return rows


def bench_pieces(args) -> List[Dict]:
    """The stubbed job (allennlp --top float32, flat --top float16) in one piece and in 4 (written,
    the first three hashed, merged): what a run longer than one piece (100 k sentences by default)
    pays for its resume checkpoints."""
    rows = []
    n = 2_000 if args.quick else args.sentences
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        src = os.path.join(d, "corpus.txt")
        tokens = write_corpus(src, n)
        for layout, dtype_out in (("allennlp", "float32"), ("flat", "float16")):
            times: Dict[int, List[float]] = {1: [], 4: []}
            for _ in range(1 if args.quick else args.stub_reps):
                for pieces in (1, 4):
                    r = _measure("stub", src, os.path.join(d, "o.h5"),
                                 ["--layout", layout, "--format", "top", "--dtype-out", dtype_out,
                                  "--piece-sentences", str(-(-n // pieces))])
                    times[pieces].append(r["seconds"])
            for pieces, ts in times.items():
                med = statistics.median(ts)
                rows.append(dict(bench="pieces", layout=layout, format="top", dtype_out=dtype_out,
                                 sentences=n, tokens=tokens, pieces=pieces, seconds=med, seconds_each=ts,
                                 tokens_per_s=tokens / med))
                print(f"pieces {layout} --top {dtype_out}, {pieces} piece(s): {tokens / med:,.0f} tok/s "
                      f"({', '.join(f'{t:.2f}' for t in ts)} s)", flush=True)
    return rows


def bench_long_line(args) -> List[Dict]:
    """The real model on one line of --long-line tokens: peak RSS of a fresh process."""
    from elmo_fast.synthetic import make_options, write_model

    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        arch = "small" if args.quick else args.arch
        T = 300 if args.quick else args.long_line
        opts, weights = write_model(os.path.join(d, "model"), make_options(arch), seed=0)
        _, vocab = fixture_lengths_and_vocab()
        src = os.path.join(d, "long.txt")
        rng = np.random.default_rng(2)
        with open(src, "w") as f:
            f.write(" ".join(vocab[j] for j in rng.integers(len(vocab), size=T)) + "\n")
        r = _measure("model", src, os.path.join(d, "o.h5"), ["--options", opts, "--weights", weights])
        rows.append(dict(bench="memory", job="long-line", arch=arch, tokens=T, **r))
        print(f"memory long line: {T} tokens, {arch}: peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['seconds']:.0f} s)",
              flush=True)
    return rows


# ----------------------------------------------------------------------------------------- main
def environment() -> Dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None

    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv),
            "python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "commit": git("rev-parse", "HEAD"),
            # new result files are not edits
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("stub", "e2e", "memory", "pieces", "long-line", "all", "_child"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--dir", default=None, help="where outputs go (default: the system temporary folder)")
    p.add_argument("--sentences", type=int, default=20_000, help="stub: corpus size")
    p.add_argument("--stub-reps", type=int, default=2,
                   help="stub: runs of each row (job, raw write, ...; median)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch", default="original", choices=("small", "medium", "original"))
    p.add_argument("--e2e-sentences", type=int, default=400)
    p.add_argument("--e2e-reps", type=int, default=2, help="e2e: runs of each job, interleaved (median)")
    p.add_argument("--long-line", type=int, default=100_000, help="memory: tokens in the long line")
    p.add_argument("--unmatched", action="store_true",
                   help="stub: each side unlinks its own file when done (the job then writes into memory "
                        "freed a process start earlier; see the module doc)")
    p.add_argument("--json", help="write the rows and the environment to this file")
    # _child only
    p.add_argument("--child", choices=("stub", "model"))
    p.add_argument("--input")
    p.add_argument("--output")
    p.add_argument("--options")
    p.add_argument("--weights")
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--piece-sentences", type=int, default=None)
    p.add_argument("--free", action="append", default=[], help="unlinked just before the timer (repeat)")
    p.add_argument("--keep-output", action="store_true", help="leave the output for the caller to unlink")
    p.add_argument("--layout", default="flat")
    p.add_argument("--format", default="top")
    p.add_argument("--dtype-out", default="float16")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.what == "_child":
        _child(args)
        return 0
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    rows: List[Dict] = []
    for what, fn in (("stub", bench_stub), ("e2e", bench_e2e), ("memory", bench_memory),
                     ("pieces", bench_pieces), ("long-line", bench_long_line)):
        if args.what in (what, "all"):
            rows += fn(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
