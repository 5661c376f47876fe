"""CPU speed of the reference path against allennlp 0.9's own Elmo and against the machine's GEMM
ceiling (issues #2 item 6 and #12).

Both run the same random-weight model (original architecture by default: 2 x 4096/512 LSTM, 2
highway layers; one options.json + weights.hdf5 written by elmo_fast.synthetic, cached) on the same
sentences (lengths from the shared fixture's sentences), in the same process, repetitions
interleaved (ours, allennlp, allennlp, ours, ...), so machine noise hits both.

  ours:     elmo_fast.Elmo(..., dropout=0), eval, torch backend, torch.inference_mode
  allennlp: allennlp.modules.elmo.Elmo(..., dropout=0.0), eval, torch.no_grad (loaded from the
            0.9.0 wheel by ../shared/tools/allennlp_elmo.py)
  stateless mode: ours stateful=False; allennlp's states reset before every call (zero state)
  stateful mode:  both carry each row's state from call to call (allennlp's default); both have
            seen the same calls, so their outputs are compared on the last repetition too

The same run measures the fp32 GEMM ceiling (a 2048^3 torch.mm at the thread count used, median and
best of several calls: once at the start, and for each row between its timed rounds, the row's
fraction taken against the latter, since these VMs drift) and counts the FLOPs of each batch
(`elmo_fast.bench.batch_flops`: char CNN, highway, projection, LSTM input projections, recurrent
GEMMs and cell projections of the real positions, <S> and </S> included): each row reports the model
FLOP rate of both implementations as a fraction of the ceiling (the same count for both, so the
fractions compare like tokens/s) and the fraction of what our path executes (it encodes distinct
tokens only). Tokens are real tokens. The record's environment says whether the recurrence ran on
our CPU kernel (`cpu_kernels`).

    python bench/bench_cpu.py --batches 1,8,32,128 --json PATH     # the record (quiet machine)
    python bench/bench_cpu.py --profile --batches 32                 # time per op, threads 1 and 2
    python bench/bench_cpu.py --busy-core --batches 32               # 2 vs 1 thread, one core kept busy
    python bench/bench_cpu.py --quick                                # plumbing check (tiny model)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import torch

from elmo_fast import bench as B
from elmo_fast.bench.cpu_profile import FAMILIES, profile_call

MODES = ("stateless", "stateful")
# which counted FLOPs each profiled family runs (batch_flops keys)
FAMILY_FLOPS = {"char CNN": ("char_cnn",), "highway + projection": ("highway", "projection"),
                "input projections": ("lstm_input",), "recurrent GEMMs": ("lstm_recurrent",),
                "cell projections": ("lstm_cell_projection",)}


def int_list(text: str) -> List[int]:
    try:
        vals = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return vals


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=None, choices=["original", "medium", "small", "tiny"],
                    help="model (default original; --quick: tiny)")
    ap.add_argument("--batches", type=int_list, default=None,
                    help="sentences per batch, comma-separated (default 1,8,32,128; --quick: 1,3)")
    ap.add_argument("--modes", default="stateless,stateful", help="stateless,stateful or one of them")
    ap.add_argument("--reps", type=int, default=None, help="timed calls of each, interleaved (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--profile", action="store_true",
                    help="instead: time per op family of our path (torch.profiler), threads 1 and 2")
    ap.add_argument("--busy-core", action="store_true",
                    help="instead: our path at 2 threads vs 1 thread while another process keeps a core busy")
    ap.add_argument("--quick", action="store_true", help="tiny model, batches 1 and 3, one rep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_path", default=None, metavar="PATH")
    args = ap.parse_args(argv)
    args.arch = args.arch or ("tiny" if args.quick else "original")
    args.batches = args.batches or ([1, 3] if args.quick else [1, 8, 32, 128])
    args.reps = args.reps or (1 if args.quick else 3)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        ap.error(f"--modes {','.join(args.modes)}: choose from {','.join(MODES)}")
    return args


class Batch:
    """The sentences of one batch size, their character ids and FLOP counts."""

    def __init__(self, n: int, options: Dict[str, Any], seed: int):
        from elmo_fast import batch_to_ids
        from elmo_fast.chars import BOS_CHARS, EOS_CHARS
        from elmo_fast.dedup import unique_tokens
        from elmo_fast.modules import add_sentence_boundaries

        lengths, self.lengths_src = B.sentence_lengths()
        vocab, self.vocab_src = B.vocabulary()
        self.sents = B.make_sentences(n, lengths, vocab, seed=seed + n)
        self.tokens = sum(len(s) for s in self.sents)
        self.ids = batch_to_ids(self.sents)
        # the rows our char encoder runs: distinct tokens of the batch with <S> and </S> added
        mask = (self.ids > 0).any(-1)
        wrapped, wmask = add_sentence_boundaries(self.ids, mask, torch.tensor(BOS_CHARS).view(-1),
                                                 torch.tensor(EOS_CHARS).view(-1))
        distinct = unique_tokens(wrapped[wmask])[0].shape[0]
        self.flops = B.batch_flops(options, [len(s) + 2 for s in self.sents], distinct=distinct)


def ceiling(quick: bool) -> Dict[str, Any]:
    c = B.matmul_ceiling(torch.device("cpu"), torch.float32, quick)
    print(f"  fp32 GEMM ceiling ({c['n']}^3 torch.mm, {c['threads']} threads): "
          f"{c['flops_per_s'] / 1e9:.1f} GFLOP/s median, {c.get('flops_per_s_best', 0) / 1e9:.1f} best",
          flush=True)
    return c


def build(arch: str, seed: int):
    opath, wpath = B.model_files(arch, seed=seed)
    with open(opath) as f:
        options = json.load(f)
    return opath, wpath, options


def ours_call(opath: str, wpath: str, stateful: bool):
    from elmo_fast.modules import Elmo

    m = Elmo(opath, wpath, num_output_representations=1, dropout=0.0, stateful=stateful).eval()

    def call(ids):
        with B._force_backend("torch"), torch.inference_mode():
            out = m(ids)
        return out["elmo_representations"][0], out["mask"]
    return m, call


def time_pair(calls: Dict[str, Any], ids, reps: int, before: Dict[str, Any],
              ceiling_probe=None) -> Dict[str, List[float]]:
    """Wall seconds of `reps` interleaved calls of each; before[k]() runs untimed before each call;
    ceiling_probe (a CeilingProbe), when given, takes its samples between the rounds."""
    times: Dict[str, List[float]] = {k: [] for k in calls}
    for r in range(reps):
        if ceiling_probe is not None:
            ceiling_probe.sample()
        for k in (list(calls) if r % 2 == 0 else list(reversed(list(calls)))):
            before.get(k, lambda: None)()
            t = time.perf_counter()
            calls[k](ids)
            times[k].append(time.perf_counter() - t)
    if ceiling_probe is not None:
        ceiling_probe.sample()
    return times


class CeilingProbe:
    """The GEMM ceiling sampled between the timed rounds of one row (the same 2048^3 torch.mm as
    `ceiling`, two calls per sample): these VMs' speed drifts by up to 2x within minutes (issue 12,
    third session: 80-161 GFLOP/s in one run), so each row's fraction is taken against the ceiling
    measured while that row ran, not once at the start."""

    def __init__(self, quick: bool):
        n = 512 if quick else 2048
        self.n = n
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        self.rates: List[float] = []
        self.a @ self.b                                      # first call: threads woken, pages touched

    def sample(self) -> None:
        for _ in range(2):
            t = time.perf_counter()
            self.a @ self.b
            self.rates.append(2.0 * self.n ** 3 / (time.perf_counter() - t))

    def summary(self) -> Dict[str, Any]:
        return {"n": self.n, "threads": torch.get_num_threads(), "samples_flops_per_s": self.rates,
                "flops_per_s": statistics.median(self.rates), "flops_per_s_best": max(self.rates)}


def run_compare(args) -> Dict[str, Any]:
    opath, wpath, options = build(args.arch, args.seed)
    ceil = ceiling(args.quick)              # once at the start; each row's fraction uses its own probe
    allen = B.load_allennlp()
    theirs, call_theirs = B.build_variant("allennlp", opath, wpath, torch.device("cpu"), allen)
    rows, ok = [], True
    for mode in args.modes:
        ours, call_ours = ours_call(opath, wpath, stateful=mode == "stateful")
        for n in args.batches:
            batch = Batch(n, options, args.seed)
            ours._elmo_lstm.reset_states()
            B.reset_allennlp_states(theirs)
            rep_a, mask_a = call_ours(batch.ids)            # both from a zero state: the same output
            rep_b, mask_b = call_theirs(batch.ids)
            err = B.compare(rep_a, rep_b, mask_a)
            same_mask = bool(torch.equal(mask_a.long(), mask_b.long()))
            before = {"allennlp": (lambda: B.reset_allennlp_states(theirs))} if mode == "stateless" else {}
            probe = CeilingProbe(args.quick)
            times = time_pair({"elmo_fast": call_ours, "allennlp": call_theirs}, batch.ids, args.reps, before,
                              probe)
            row_ceiling = probe.summary()
            rate = row_ceiling["flops_per_s"]
            if mode == "stateful":                          # same history on both sides: compare again
                err_last = B.compare(call_ours(batch.ids)[0], call_theirs(batch.ids)[0], mask_a)
            else:
                err_last = err
            med = {k: statistics.median(v) for k, v in times.items()}
            best = {k: min(v) for k, v in times.items()}
            f = batch.flops
            row = {"mode": mode, "batch": n, "tokens": batch.tokens, "positions": f["positions"],
                   "max_len": int(batch.ids.shape[1]), "distinct_tokens": f["distinct_tokens"],
                   "flops": f, "times_s": times,
                   "tokens_per_s": {k: batch.tokens / v for k, v in med.items()},
                   "tokens_per_s_best": {k: batch.tokens / v for k, v in best.items()},
                   "ratio": med["allennlp"] / med["elmo_fast"],
                   "ratio_best": best["allennlp"] / best["elmo_fast"],
                   "ceiling": row_ceiling,
                   "fraction_of_ceiling": {k: f["model"]["total"] / v / rate for k, v in med.items()},
                   "executed_fraction_of_ceiling": f["executed"]["total"] / med["elmo_fast"] / rate,
                   "first_call_error": err, "last_call_error": err_last, "masks_equal": same_mask}
            rows.append(row)
            ok = ok and err["max_abs"] < 1e-4 and err_last["max_abs"] < 1e-4 and same_mask
            fr, tps = row["fraction_of_ceiling"], row["tokens_per_s"]
            print(f"  {mode:9s} batch {n:4d} ({batch.tokens} tokens): elmo_fast "
                  f"{tps['elmo_fast']:8.1f} tok/s ({fr['elmo_fast']:5.1%} of ceiling, executed "
                  f"{row['executed_fraction_of_ceiling']:5.1%}), allennlp {tps['allennlp']:8.1f} "
                  f"({fr['allennlp']:5.1%}); ratio {row['ratio']:.2f}x ({row['ratio_best']:.2f}x best); "
                  f"ceiling while it ran {rate / 1e9:.0f} GFLOP/s "
                  f"({min(probe.rates) / 1e9:.0f}-{max(probe.rates) / 1e9:.0f}); "
                  f"max abs diff {err['max_abs']:.1e} / {err_last['max_abs']:.1e}", flush=True)
        del ours
    return {"ceiling": ceil, "rows": rows, "ok": ok}


def run_profile(args) -> Dict[str, Any]:
    opath, wpath, options = build(args.arch, args.seed)
    ls = options["lstm"]
    _, call = ours_call(opath, wpath, stateful=False)
    out = []
    for n in args.batches:
        batch = Batch(n, options, args.seed)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ceil = ceiling(args.quick)
            call(batch.ids)                                 # warm: weights packed, caches filled
            t = time.perf_counter()
            call(batch.ids)
            default_wall = time.perf_counter() - t
            # the profiler sees only the calling thread, so the directions run in turn while profiled
            # (at 2 threads they normally run concurrently, one thread each: default_wall_s)
            with directions_in_turn():
                prof = profile_call(lambda: call(batch.ids), ls["projection_dim"], ls["dim"])
            prof["default_wall_s"] = default_wall
            ex = batch.flops["executed"]
            rates = {fam: sum(ex[k] for k in keys) / prof["seconds"][fam] / 1e9
                     for fam, keys in FAMILY_FLOPS.items() if prof["seconds"][fam] > 0}
            out.append({"batch": n, "threads": threads, "tokens": batch.tokens, "ceiling": ceil,
                        "gflops_per_s": rates, **prof})
            print(f"  batch {n}, {threads} thread(s): {prof['unprofiled_wall_s']:.3f} s unprofiled with the "
                  f"directions in turn ({default_wall:.3f} s as run by default), "
                  f"{prof['profiled_wall_s']:.3f} s profiled, {prof['top_level_ops']} ops", flush=True)
            for fam in FAMILIES:
                s = prof["seconds"][fam]
                gf = f"  {rates[fam]:6.1f} GFLOP/s" if fam in rates else ""
                print(f"    {fam:24s} {s:8.3f} s {s / prof['profiled_wall_s']:6.1%}{gf}", flush=True)
    return {"profile": out}


@contextlib.contextmanager
def directions_in_turn() -> Iterator[None]:
    from elmo_fast.reference import bilstm

    old = bilstm.CONCURRENT_DIRECTIONS
    bilstm.CONCURRENT_DIRECTIONS = False
    try:
        yield
    finally:
        bilstm.CONCURRENT_DIRECTIONS = old


@contextlib.contextmanager
def busy_core() -> Iterator[subprocess.Popen]:
    """Another process spinning on one core for the block."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()


def run_busy(args) -> Dict[str, Any]:
    opath, wpath, options = build(args.arch, args.seed)
    _, call = ours_call(opath, wpath, stateful=False)
    out = []
    for n in args.batches:
        batch = Batch(n, options, args.seed)
        call(batch.ids)
        with busy_core():
            calls = {}
            for threads in (2, 1):
                def timed(ids, threads=threads):
                    torch.set_num_threads(threads)
                    return call(ids)
                calls[f"{threads} threads"] = timed
            times = time_pair(calls, batch.ids, args.reps, {})
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"batch": n, "tokens": batch.tokens, "times_s": times,
               "tokens_per_s": {k: batch.tokens / v for k, v in med.items()},
               "two_over_one": med["1 threads"] / med["2 threads"]}
        out.append(row)
        print(f"  batch {n}, one core busy: 2 threads {row['tokens_per_s']['2 threads']:.1f} tok/s, 1 thread "
              f"{row['tokens_per_s']['1 threads']:.1f} tok/s: 2 threads run at {row['two_over_one']:.2f}x "
              "the speed of 1 (target: >= 1, no collapse)", flush=True)
    return {"busy_core": out}


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = B.environment(torch.device("cpu"))
    print(f"CPU: {env['cpu']} ({env['cpu_count']} cores); torch {env['torch']}; torch threads "
          f"{torch.get_num_threads()}; commit {env['commit'][:12]}{' (dirty)' if env['dirty'] else ''}; "
          f"arch {args.arch}; load average {os.getloadavg()}", flush=True)
    if args.profile:
        res = run_profile(args)
    elif args.busy_core:
        res = run_busy(args)
    else:
        res = run_compare(args)
    lengths_src = Batch(1, build(args.arch, args.seed)[2], args.seed).lengths_src
    rec = {"kind": "bench_cpu", "environment": env, "arch": args.arch, "threads": env["torch_threads"],
           "batches": args.batches, "modes": args.modes, "reps": args.reps,
           "sentence_lengths_from": B.display_source(lengths_src), "load_average_after": os.getloadavg(),
           **res}
    if args.json_path:
        B.write_json(args.json_path, rec)
        print(f"wrote {args.json_path}")
    return 0 if res.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
