"""CPU speed of the reference path against allennlp 0.9's own Elmo (issue #2 item 6).

Both run the original architecture (2 x 4096/512 LSTM, 2 highway layers) with the same random
weights (one options.json + weights.hdf5 written by elmo_fast.synthetic, cached), on the same
batch of sentences whose lengths follow the shared fixture's sentences, in the same process,
with repetitions interleaved (ours, allennlp, allennlp, ours, ...), so machine noise hits both.

  ours:     elmo_fast.Elmo(..., dropout=0, stateful=False), eval, ELMO_FAST_BACKEND=torch,
            torch.inference_mode
  allennlp: allennlp.modules.elmo.Elmo(..., dropout=0.0), eval, torch.no_grad (loaded from the
            0.9.0 wheel by ../shared/tools/allennlp_elmo.py)

Timed: Elmo.forward on precomputed character ids (the ids are the same tensor for both; the two
batch_to_ids are identical and elmo_fast's is benchmarked in test_bench_chars.py). Tokens are
real tokens. Also checked: the first call of each (both from a zero state) gives the same ELMo
representation (max abs difference printed; expected ~1e-6).

    python bench/bench_cpu.py [--batch 32] [--reps 5] [--threads N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from elmo_fast import bench as B


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="original", choices=["original", "medium", "small"])
    ap.add_argument("--batch", type=int, default=32, help="sentences per batch")
    ap.add_argument("--reps", type=int, default=5, help="timed calls of each, interleaved")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_path", default=None, metavar="PATH")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = B.environment(device)
    print(f"CPU: {env['cpu']} ({env['cpu_count']} cores); torch {env['torch']}; "
          f"torch threads {torch.get_num_threads()}; commit {env['commit'][:12]}"
          f"{' (dirty)' if env['dirty'] else ''}", flush=True)

    opath, wpath = B.model_files(args.arch, seed=args.seed)
    lengths, lengths_src = B.sentence_lengths()
    vocab, vocab_src = B.vocabulary()
    sents = B.make_sentences(args.batch, lengths, vocab, seed=args.seed + args.batch)
    ntok = sum(len(s) for s in sents)
    from elmo_fast import batch_to_ids
    ids = batch_to_ids(sents)
    print(f"batch: {args.batch} sentences, {ntok} tokens, longest {ids.shape[1]} "
          f"(lengths from {lengths_src})", flush=True)

    ours, call_ours = B.build_variant("reference", opath, wpath, device)
    allen = B.load_allennlp()
    theirs, call_theirs = B.build_variant("allennlp", opath, wpath, device, allen)
    calls = {"elmo_fast": call_ours, "allennlp": call_theirs}

    # same output? both start from a zero state on their first call
    B.reset_allennlp_states(theirs)
    rep_a, mask_a = call_ours(ids)
    rep_b, mask_b = call_theirs(ids)
    same_mask = bool(torch.equal(mask_a.long(), mask_b.long()))
    err = B.compare(rep_a, rep_b, mask_a)
    print(f"first-call agreement: max abs diff {err['max_abs']:.3e}, rel RMS {err['rel_rms']:.3e}, "
          f"masks equal: {same_mask}", flush=True)

    times = {k: [] for k in calls}
    cpu = {k: [] for k in calls}
    for r in range(args.reps):
        order = list(calls) if r % 2 == 0 else list(reversed(list(calls)))
        for k in order:
            c = time.process_time()
            t = time.perf_counter()
            calls[k](ids)
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
        print(f"  rep {r + 1}/{args.reps}: " + ", ".join(f"{k} {times[k][-1]:.3f} s (cpu {cpu[k][-1]:.3f} s)"
                                                        for k in calls), flush=True)
    res = {k: {"median_s": statistics.median(v), "min_s": min(v), "times_s": v, "cpu_times_s": cpu[k],
               "tokens_per_s": ntok / statistics.median(v), "tokens_per_s_best": ntok / min(v)}
           for k, v in times.items()}
    ratio = res["elmo_fast"]["tokens_per_s"] / res["allennlp"]["tokens_per_s"]
    ratio_best = res["elmo_fast"]["tokens_per_s_best"] / res["allennlp"]["tokens_per_s_best"]
    ratio_cpu = statistics.median(cpu["allennlp"]) / statistics.median(cpu["elmo_fast"])
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"elmo_fast reference: {res['elmo_fast']['tokens_per_s']:8.1f} tokens/s "
          f"(median {res['elmo_fast']['median_s']:.3f} s/batch)")
    print(f"allennlp 0.9 Elmo:   {res['allennlp']['tokens_per_s']:8.1f} tokens/s "
          f"(median {res['allennlp']['median_s']:.3f} s/batch)")
    print(f"ratio: {ratio:.2f}x on medians, {ratio_best:.2f}x on best calls, {ratio_cpu:.2f}x on process CPU "
          f"time  (threads {torch.get_num_threads()}, batch {args.batch}, {ntok} tokens; "
          f"load average {load})")
    if load and load[0] > (os.cpu_count() or 1):
        print("  note: the machine is loaded by other processes; wall times are noisy (compare the best "
              "calls, or run with --threads 1)")
    if args.json_path:
        rec = {"kind": "bench_cpu", "environment": env, "arch": args.arch, "batch": args.batch,
               "tokens": ntok, "max_len": int(ids.shape[1]), "threads": torch.get_num_threads(),
               "reps": args.reps, "sentence_lengths_from": B.display_source(lengths_src),
               "vocabulary_from": B.display_source(vocab_src),
               "results": res, "ratio": ratio, "ratio_best": ratio_best, "ratio_cpu_time": ratio_cpu,
               "load_average_after": load, "first_call_error": err, "masks_equal": same_mask}
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(rec, f, indent=1)
        print(f"wrote {args.json_path}")
    return 0 if err["max_abs"] < 1e-4 and same_mask else 1


if __name__ == "__main__":
    sys.exit(main())
