"""Ray Data scale-out: tokens/s of `elmo_fast.ray.embed_dataset` with 1 and 2 CPU workers, beside
one process, on the same corpus in the same run (issue #11).

Corpus: the shared fixture's sentences (their real lengths), repeated to --sentences. Model: the
fixture model (--model to change). All runs are stateless. Timed per run, end to end as a user
sees it: the Ray job from submission until the driver has every sentence's embedding in sentence
order (actor start and model load included; the time to the first result is reported apart);
nothing is written to disk. "one process" is `ElmoEmbedder(stateful=False).embed_batch` over the
same length-sorted batches in this process, with --threads torch threads.

The Ray cluster is a local one started here with every CPU of the machine (num_cpus = os.cpu_count());
actor CPUs come from `elmo_fast.ray.worker_cpus` (a share is always left for Ray Data's own tasks),
so on 2 cores two workers are not expected to double one.

    python bench/bench_ray.py [--sentences 3000] [--workers 1 2] [--json PATH]
    python bench/bench_ray.py --quick          (a dry run: 90 sentences, batches of 8, 1 and 2 workers)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from elmo_fast import bench as B


def _corpus(n: int):
    fixtures = B.fixtures_dir()
    if fixtures is None:
        raise SystemExit("bench_ray: the shared fixture (../shared/fixtures/elmo) is not found; "
                         "set ELMO_FAST_FIXTURES")
    batches = json.loads((fixtures / "sentences.json").read_text())
    base = [" ".join(s) for b in batches for s in b]
    return [base[i % len(base)] for i in range(n)], str(fixtures)


def _one_process(model: str, sentences, batch_size: int) -> float:
    from elmo_fast import ElmoEmbedder

    start = time.perf_counter()
    emb = ElmoEmbedder(model=model, stateful=False, progress=False)
    tokens = [s.split() for s in sentences]
    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    for k in range(0, len(order), batch_size):
        emb.embed_batch([tokens[i] for i in order[k:k + batch_size]])
    return time.perf_counter() - start


def _on_ray(model: str, sentences, workers: int, batch_size: int):
    from elmo_fast.ray import embed_dataset, ordered_embeddings, sentences_dataset

    start = time.perf_counter()
    ds = sentences_dataset(sentences, rows_per_block=batch_size * 4)
    first = None
    n = 0
    for _ in ordered_embeddings(embed_dataset(ds, model, workers=workers, batch_size=batch_size),
                                len(sentences)):
        if first is None:
            first = time.perf_counter() - start
        n += 1
    assert n == len(sentences)
    return time.perf_counter() - start, first


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=3000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the one-process run")
    ap.add_argument("--model", default=None, help="model name or path (default: the shared fixture)")
    ap.add_argument("--quick", action="store_true", help="dry run: 90 sentences, batches of 8")
    ap.add_argument("--json", dest="json_path", default=None, metavar="PATH")
    args = ap.parse_args(argv)
    try:
        import ray
    except ImportError:
        print("bench_ray: Ray is not installed: pip install 'elmo_fast[ray]'", file=sys.stderr)
        return 2
    if args.quick:
        args.sentences, args.batch_size = 90, 8  # blocks of 32 rows: 3 blocks, so both workers get one
    if args.threads:
        torch.set_num_threads(args.threads)
    sentences, fixture = _corpus(args.sentences)
    model = args.model or fixture
    tokens = sum(len(s.split()) for s in sentences)
    env = B.environment(torch.device("cpu"))
    print(f"CPU: {env['cpu']} ({env['cpu_count']} cores); torch {env['torch']}; ray {ray.__version__}; "
          f"commit {env['commit'][:12]}{' (dirty)' if env['dirty'] else ''}", flush=True)
    print(f"corpus: {len(sentences)} sentences, {tokens} tokens (fixture lengths); model {model}", flush=True)

    runs = []
    secs = _one_process(model, sentences, args.batch_size)
    runs.append({"variant": "one process", "threads": torch.get_num_threads(), "seconds": secs,
                 "tokens_per_s": tokens / secs})
    print(f"  one process ({torch.get_num_threads()} threads): {tokens / secs:10.0f} tokens/s ({secs:.1f} s)",
          flush=True)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for w in args.workers:
            secs, first = _on_ray(model, sentences, w, args.batch_size)
            runs.append({"variant": f"ray {w} worker(s)", "workers": w, "seconds": secs,
                         "first_result_s": first, "tokens_per_s": tokens / secs})
            print(f"  Ray, {w} CPU worker(s): {tokens / secs:10.0f} tokens/s ({secs:.1f} s, "
                  f"first result after {first:.1f} s)", flush=True)
    finally:
        ray.shutdown()
    rec = {"bench": "ray", "environment": env, "ray": ray.__version__, "model": model,
           "sentences": len(sentences), "tokens": tokens, "batch_size": args.batch_size, "quick": args.quick,
           "runs": runs, "ratio_2_over_1": _ratio(runs)}
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rec, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0


def _ratio(runs):
    by = {r.get("workers"): r["tokens_per_s"] for r in runs if "workers" in r}
    return by[2] / by[1] if 1 in by and 2 in by else None


if __name__ == "__main__":
    sys.exit(main())
