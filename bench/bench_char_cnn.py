"""Benchmark: fused Triton character encoder vs the reference (cuDNN conv1d via char_cnn_ref).

    python bench/bench_char_cnn.py                      # GPU: N = 4k..256k, fp32 and bf16
    python bench/bench_char_cnn.py --json out.json      # also write the records
    python bench/bench_char_cnn.py --dry-run            # CPU check: tiny N, reference + interpreter

Tokens are realistic: words sampled (with their corpus frequencies) from the fixture's
sentences.json (+ vocab_test.txt), wrapped in <S> ... </S>; if the fixture is missing, a synthetic
Zipf-like word-length distribution is used instead (the header says which).
Reported per (dtype, N): ms (median, 20-80% quantiles), tokens/s, and TFLOP/s counted two ways:
  eff  = the reference's FLOPs (all 50 - w + 1 windows), i.e. the work the result is worth;
  exec = the FLOPs the Triton kernel actually issues (windows visited per token block).
Also: the padding trick's FLOP saving on these tokens, and token deduplication timings.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import time

STANDARD_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]
E_STD, L = 16, 50


# ---- tokens ---------------------------------------------------------------------------------

def corpus_words(seed: int):
    """(list of sentences as word lists, description of the source)."""
    from elmo_fast.bench.inputs import fixtures_dir

    fixtures = fixtures_dir()
    sent_file = fixtures / "sentences.json" if fixtures else None
    vocab_file = fixtures / "vocab_test.txt" if fixtures else None
    if sent_file is not None:
        groups = json.loads(sent_file.read_text())
        sents = [s.split() for g in groups for s in g]
        src = f"{sent_file.name} ({len(sents)} sentences)"
        if vocab_file.exists():
            vocab = [w for w in vocab_file.read_text().split() if w]
            sents.append(vocab)  # every vocabulary word once more, as one long 'sentence'
            src += f" + {vocab_file.name} ({len(vocab)} words)"
        return sents, src
    # synthetic fallback: Zipf-like vocabulary, English-like word lengths (mean ~4.7 bytes)
    rng = random.Random(seed)
    def length():
        return max(1, min(60, int(rng.lognormvariate(1.4, 0.55))))

    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length())) for _ in range(5000)]
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    sents = [rng.choices(vocab, weights, k=rng.randint(5, 40)) for _ in range(2000)]
    return sents, "SYNTHETIC Zipf-like lengths (fixture sentences.json not found)"


def sample_chars(n: int, sents, seed: int = 0):
    """[n, 50] long: whole sentences sampled with replacement, each wrapped in <S> ... </S>."""
    import torch

    rng = random.Random(seed)
    words = []
    while len(words) < n:
        words += ["<S>"] + rng.choice(sents) + ["</S>"]
    words = words[:n]
    table = {w: i for i, w in enumerate(dict.fromkeys(words))}
    from elmo_fast.chars import tokens_to_char_ids

    rows = torch.as_tensor(tokens_to_char_ids(list(table)), dtype=torch.long)
    return rows[torch.tensor([table[w] for w in words])]


# ---- FLOP accounting ------------------------------------------------------------------------

def full_flops(n: int, filters=STANDARD_FILTERS, E: int = E_STD) -> float:
    return 2.0 * n * sum((L - w + 1) * w * E * k for w, k in filters)


def exec_flops(chars, block_t: int | None, filters=STANDARD_FILTERS, E: int = E_STD) -> float:
    """FLOPs with the padding trick: per token (block_t=None) or as the kernel issues them, every
    token of a block visiting the windows of the block's longest token."""
    import torch

    from elmo_fast.dedup import real_lengths

    lens = real_lengths(chars.cpu()).double()
    if block_t:
        pad = (-lens.shape[0]) % block_t
        lens = torch.cat([lens, lens.new_zeros(pad)]).view(-1, block_t).amax(1).repeat_interleave(block_t)
    return 2.0 * sum(float(torch.clamp(lens, max=L - w + 1).sum()) * w * E * k for w, k in filters)


def trick_report(chars, block_t: int) -> dict:
    import torch

    from elmo_fast.dedup import real_lengths, unique_tokens

    n = chars.shape[0]
    full = full_flops(n)
    lens = real_lengths(chars).double()
    by_len = chars[torch.argsort(lens, stable=True)]
    uniq, _ = unique_tokens(chars, sort_by_length=True)
    rep = dict(
        tokens=n, mean_real_len=float(lens.mean()), median_real_len=float(lens.median()),
        full_mflop_per_token=full / n / 1e6,
        saving_per_token=full / exec_flops(chars, None),
        saving_blocked_input_order=full / exec_flops(chars, block_t),
        saving_blocked_sorted=full / exec_flops(by_len, block_t),
        unique_fraction=uniq.shape[0] / n,
        saving_dedup_sorted_blocked=full / exec_flops(uniq, block_t),
    )
    return rep


# ---- timing ---------------------------------------------------------------------------------

def timer(fn, cuda: bool):
    """(median, p20, p80) in ms."""
    if cuda:
        from triton.testing import do_bench

        return tuple(do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    fn()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[2], ts[1], ts[3]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU: tiny N, reference + Triton interpreter")
    ap.add_argument("--sizes", type=int, nargs="*", help="token counts (default 4k..256k; dry run 64, 256)")
    ap.add_argument("--dtypes", nargs="*", default=["bf16", "fp32"])
    ap.add_argument("--json", type=pathlib.Path, help="write the records here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-s", type=float, default=None,
                    help="start no new measurement after this many seconds")
    args = ap.parse_args(argv)

    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    from elmo_fast.kernels.char_cnn import _block_config, char_cnn_fwd

    from elmo_fast.dedup import real_lengths, unique_tokens
    from elmo_fast.reference.char_cnn import char_cnn_ref

    cuda = torch.cuda.is_available() and not args.dry_run
    dev = "cuda" if cuda else "cpu"
    sizes = args.sizes or ([64, 256] if args.dry_run else [4096, 16384, 65536, 262144])
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    sents, source = corpus_words(args.seed)
    from elmo_fast.bench import environment

    env = environment(torch.device(dev))
    env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    print(f"# char CNN, standard filters (2048, E=16) | {env['gpu'] or env['cpu']} | torch {env['torch']} "
          f"triton "
          f"{env['triton']} | tokens: {source}")
    records = dict(env=env, token_source=source, runs=[], dedup=[], trick=None, complete=False)
    t_start = time.perf_counter()

    def flush():  # the record is rewritten after every measurement: a run cut short keeps them
        if args.json:
            from elmo_fast.bench import write_json

            write_json(str(args.json), records)

    def out_of_time() -> bool:
        return args.max_s is not None and time.perf_counter() - t_start > args.max_s

    big = sample_chars(max(sizes), sents, args.seed)
    block_t = _block_config(torch.device("cuda"), torch.bfloat16)["BLOCK_T"]
    records["trick"] = trick_report(big, block_t)
    t = records["trick"]
    print(f"# padding trick on {t['tokens']} tokens (mean real length {t['mean_real_len']:.2f}, median "
          f"{t['median_real_len']:.0f}): FLOPs / {t['saving_per_token']:.2f} per token, "
          f"/ {t['saving_blocked_input_order']:.2f} in blocks of {block_t} (input order), "
          f"/ {t['saving_blocked_sorted']:.2f} sorted by length; "
          f"unique tokens {100 * t['unique_fraction']:.1f}% "
          f"-> / {t['saving_dedup_sorted_blocked']:.1f} with dedup")

    torch.manual_seed(args.seed)
    emb32 = torch.randn(262, E_STD, device=dev)
    emb32[0] = 0
    ws32 = [torch.randn(w, E_STD, n, device=dev) / (w * E_STD) ** 0.5 for w, n in STANDARD_FILTERS]
    bs32 = [0.1 * torch.randn(n, device=dev) for _, n in STANDARD_FILTERS]

    hdr = (f"{'dtype':5} {'N':>7} {'impl':22} {'ms':>9} {'[p20, p80]':>19} {'Mtok/s':>8} "
           f"{'TF/s eff':>9} {'TF/s exec':>9}")
    print(hdr)
    for dname in args.dtypes:
        dt = dtypes[dname]
        emb, ws, bs = emb32.to(dt), [w.to(dt) for w in ws32], [b.to(dt) for b in bs32]
        for n in sizes:
            chars = big[:n].to(dev)
            sorted_chars = chars[torch.argsort(real_lengths(chars))]
            impls = [("reference (cuDNN)" if cuda else "reference (torch CPU)",
                      lambda: char_cnn_ref(chars, emb, ws, bs), full_flops(n))]
            if cuda:
                impls += [
                    ("triton", lambda: char_cnn_fwd(chars, emb, ws, bs), exec_flops(chars, block_t)),
                    ("triton, length-sorted", lambda: char_cnn_fwd(sorted_chars, emb, ws, bs),
                     exec_flops(sorted_chars, block_t)),
                    ("triton, no pad trick", lambda: char_cnn_fwd(chars, emb, ws, bs, use_pad_trick=False),
                     full_flops(n)),
                ]
            for name, fn, flops in impls:
                if out_of_time():
                    break
                ms, lo, hi = timer(fn, cuda)
                rec = dict(dtype=dname, n=n, impl=name, ms=ms, p20=lo, p80=hi, tokens_per_s=n / ms * 1e3,
                           tflops_eff=full_flops(n) / ms / 1e9, tflops_exec=flops / ms / 1e9)
                records["runs"].append(rec)
                print(f"{dname:5} {n:>7} {name:22} {ms:9.3f} [{lo:8.3f}, {hi:8.3f}] "
                      f"{rec['tokens_per_s'] / 1e6:8.3f} "
                      f"{rec['tflops_eff']:9.2f} {rec['tflops_exec']:9.2f}", flush=True)
                flush()
        if args.dry_run:  # the interpreter is far too slow to time: check it once at tiny N
            chars = big[:16]
            ref = char_cnn_ref(chars, emb, ws, bs).float()
            for trick in (True, False):
                err = (char_cnn_fwd(chars, emb, ws, bs, use_pad_trick=trick).float() - ref).abs().max()
                print(f"#   {dname} interpreter (pad trick {trick}) vs reference, N=16: "
                      f"max |diff| = {float(err):.2e}")

    print(f"\n# dedup (ms): {'N':>7} {'hash':>9} {'sort (packed)':>14} {'torch.unique(dim=0)':>20} "
          f"{'unique %':>9}")
    for n in sizes:
        if out_of_time():
            print(f"# --max-s {args.max_s} reached", flush=True)
            break
        chars = big[:n].to(dev)
        row = dict(n=n, unique=int(unique_tokens(chars)[0].shape[0]))
        row["hash_ms"] = timer(lambda: unique_tokens(chars, method="hash"), cuda)[0]
        row["sort_ms"] = timer(lambda: unique_tokens(chars, method="sort"), cuda)[0]
        row["torch_unique_ms"] = timer(lambda: torch.unique(chars, dim=0, return_inverse=True), cuda)[0]
        records["dedup"].append(row)
        print(f"#            {n:>7} {row['hash_ms']:9.3f} {row['sort_ms']:14.3f} "
              f"{row['torch_unique_ms']:20.3f} "
              f"{100 * row['unique'] / n:9.1f}")
        flush()
    records["complete"] = not out_of_time()
    flush()
    if args.json:
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
