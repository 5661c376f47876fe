"""`elmo-fast bench`: end-to-end throughput, latency and accuracy of elmo_fast beside allennlp.

What one run measures, all on the same inputs and the same random-weight model (written once in
the bilm-tf file layout by `elmo_fast.synthetic` and cached):

  * tokens/s of `Elmo.forward` for each batch size (sentences per batch) and each variant:
      reference   fp32, torch backend (the pure-PyTorch path, the test oracle), TF32 off
      fast        fp32, the dispatcher's choice (ELMO_FAST_BACKEND, default auto: Triton char CNN /
                  highway, CUDA LSTM on a GPU), TF32 off
      fast-bf16   the same module cast with .to(torch.bfloat16)
      allennlp    allennlp 0.9's own Elmo (dropout 0, eval, no_grad), loaded from its wheel
  * single-sentence latency (one sentence of 20 tokens): p50 and p99 over many calls
  * a measured matmul ceiling (bf16 and fp32) and from it the floor of the model:
      floor tokens/s = ceiling FLOP/s / FLOPs per token (GUIDE section 6: ~204 MFLOP/token for the
      original architecture), and each variant's achieved fraction of its dtype's floor
  * the error of every variant against the fp32 reference on the same batch: max abs and
    relative RMS over real (unmasked) positions of the ELMo representation

On the CPU the default is the reference and allennlp at batches 1 and 32 (about a minute for the
original model): `fast` is the reference there (auto picks torch) and bf16 runs ~26x slower than
fp32 on the CPU, so `fast-bf16` runs on the CPU only when --variants names it.

Batch sizes run in the order given (the latency right after the first), and the --json / --md
records are rewritten after every measurement, so a run cut short keeps what it measured. Models
run stateless (each sentence from a zero state) so runs are reproducible; allennlp is stateful and
its states are reset before the call whose output is compared. Tokens are real tokens.

    elmo-fast bench --device cuda --json r.json --md r.md --plot r.png
    python -m elmo_fast.bench --quick          (CPU dry run: small arch, batches 1 and 4)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import _config
from .allennlp import load_allennlp, reset_allennlp_states
from .harness import _force_backend, compare, fp32_exact, latency, matmul_ceiling, time_calls
from .inputs import flops_per_token, make_sentences, model_files, sentence_lengths, vocabulary
from .plots import plot
from .report import display_path, environment, write_json, write_text

VARIANTS = ("reference", "fast", "fast-bf16", "allennlp")
LATENCY_TOKENS = 20


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default=None, help="cuda | cpu | cuda:N (default: cuda when available)")
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated sentences per batch, run in this order (default: "
                             "1,32,256,1024 on a GPU; 1,32 on the CPU; --quick: 1,4)")
    parser.add_argument("--arch", default=None, choices=["original", "medium", "small", "tiny"],
                        help="model architecture, random weights (default: original; --quick: small; "
                             "tiny: a toy model for checks of the plumbing)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all on a GPU; "
                             "reference,allennlp on the CPU; --quick: reference,fast,allennlp)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per (variant, batch size) (default 2 on a GPU, 1 on the "
                             "CPU; --quick 0.3)")
    parser.add_argument("--latency-reps", type=int, default=None,
                        help="calls for the single-sentence latency (default 200 on a GPU, 20 on the CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and sentences")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write a JSON record")
    parser.add_argument("--md", dest="md_path", default=None, metavar="PATH", help="write a Markdown record")
    parser.add_argument("--plot", dest="plot_path", default=None, metavar="PATH",
                        help="write a throughput-vs-batch-size PNG (needs matplotlib)")
    parser.add_argument("--quick", action="store_true",
                        help="dry run: small arch, batch sizes 1 and 4, few repetitions")
    return parser


def _resolve(args) -> Dict[str, Any]:
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but this machine has no CUDA device (use --device cpu)")
    if args.batch_sizes:
        try:
            sizes = [int(s) for s in str(args.batch_sizes).split(",") if s.strip()]
        except ValueError:
            raise SystemExit(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated integers"
                             ) from None
        if not sizes or min(sizes) < 1:
            raise SystemExit(f"--batch-sizes {args.batch_sizes!r}: every batch size must be at least 1")
    elif args.quick:
        sizes = [1, 4]
    else:
        sizes = [1, 32, 256, 1024] if device.type == "cuda" else [1, 32]
    cpu = device.type == "cpu"
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    elif cpu:
        variants = ["reference", "fast", "allennlp"] if args.quick else ["reference", "allennlp"]
    else:
        variants = list(VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    return {
        "device": device,
        "sizes": sizes,
        "arch": args.arch or ("small" if args.quick else "original"),
        "variants": variants,
        "budget": args.budget if args.budget is not None else (0.3 if args.quick else (1.0 if cpu else 2.0)),
        "latency_reps": args.latency_reps or (5 if args.quick else (20 if cpu else 200)),
    }


def build_variant(variant: str, opath: str, wpath: str, device: torch.device, allennlp_elmo=None,
           fast_backend: str = "auto", seen: Optional[Dict[str, str]] = None):
    """(module, call(ids) -> (representation, mask)) for a variant; `seen` collects the backend
    each op ran (our variants only)."""
    if variant == "allennlp":
        Elmo, _ = allennlp_elmo
        m = Elmo(opath, wpath, num_output_representations=1, dropout=0.0).eval().to(device)

        def call(ids):
            with torch.no_grad():
                out = m(ids)
            return out["elmo_representations"][0], out["mask"]
        return m, call

    from ..modules import Elmo

    m = Elmo(opath, wpath, num_output_representations=1, dropout=0.0, stateful=False).eval().to(device)
    if variant == "fast-bf16":
        m = m.to(torch.bfloat16)
    name = "torch" if variant == "reference" else fast_backend
    exact = fp32_exact if variant != "fast-bf16" else contextlib.nullcontext

    def call(ids):
        with _force_backend(name, seen), exact(), torch.inference_mode():
            out = m(ids)
        return out["elmo_representations"][0], out["mask"]
    return m, call


def run(args) -> int:
    cfg = _resolve(args)
    device, sizes, arch, variants = cfg["device"], cfg["sizes"], cfg["arch"], cfg["variants"]
    torch.manual_seed(args.seed)
    env = environment(device)
    fast_backend = _config.backend_override()
    t_start = time.perf_counter()
    print(f"elmo-fast bench: arch={arch} device={device} batch sizes={sizes} variants={variants}", flush=True)
    print(f"  {env.get('gpu') or env['cpu']}; torch {env['torch']} (CUDA {env['cuda']}), "
          f"triton {env['triton']}, "
          f"{env['torch_threads']} threads; commit {env['commit'][:12]}{' (dirty)' if env['dirty'] else ''}",
          flush=True)
    if device.type == "cpu" and "fast-bf16" in variants:
        print("  note: fast-bf16 on the CPU runs ~26x slower than fp32 there (named in --variants, so it "
              "runs)",
              flush=True)

    opath, wpath = model_files(arch, seed=args.seed)
    with open(opath) as f:
        options = json.load(f)
    fpt = flops_per_token(options)
    lengths, lengths_src = sentence_lengths()
    vocab, vocab_src = vocabulary()
    from ..chars import batch_to_ids

    record: Dict[str, Any] = {
        "kind": "elmo-fast bench", "environment": env, "arch": arch,
        "model_files": [display_path(opath), display_path(wpath)], "fast_backend": fast_backend,
        "flops_per_token": fpt, "sentence_lengths_from": display_source(lengths_src),
        "vocabulary_from": display_source(vocab_src),
        "mean_sentence_length": float(np.mean(lengths)), "variants": variants, "batch_sizes": sizes,
        "throughput": [], "latency": {}, "errors": [], "skipped": {}, "backends": {}, "complete": False,
    }

    def flush() -> None:
        record["wall_s"] = time.perf_counter() - t_start
        if args.json_path:
            write_json(args.json_path, record)
        if args.md_path:
            write_text(args.md_path, to_markdown(record))

    # ---- ceilings and floors
    ceilings = {}
    for dt in (torch.bfloat16, torch.float32):
        try:
            ceilings[str(dt).replace("torch.", "")] = matmul_ceiling(device, dt, args.quick)
        except Exception as exc:
            record["skipped"][f"ceiling-{dt}"] = f"{type(exc).__name__}: {exc}"
    record["matmul_ceiling"] = ceilings
    floors = {k: v["flops_per_s"] / fpt["total"] for k, v in ceilings.items()}
    record["floor_tokens_per_s"] = floors
    for k, v in ceilings.items():
        print(f"  matmul ceiling {k}: {v['flops_per_s'] / 1e12:.2f} TFLOP/s -> floor "
              f"{floors[k]:,.0f} tokens/s at {fpt['total'] / 1e6:.1f} MFLOP/token", flush=True)
    flush()

    # ---- models
    allen = None
    if "allennlp" in variants:
        try:
            allen = load_allennlp()
        except Exception as exc:
            record["skipped"]["allennlp"] = f"{type(exc).__name__}: {exc}"
            print(f"  allennlp skipped: {record['skipped']['allennlp']}", flush=True)
    models: Dict[str, Tuple[Any, Callable]] = {}
    seen: Dict[str, Dict[str, str]] = {}
    for v in variants:
        if v == "allennlp" and allen is None:
            continue
        seen[v] = {}
        try:
            models[v] = build_variant(v, opath, wpath, device, allen, fast_backend, seen[v])
        except Exception as exc:
            record["skipped"][v] = f"{type(exc).__name__}: {exc}"
            print(f"  {v} skipped: {record['skipped'][v]}", flush=True)

    sent = make_sentences(1, [LATENCY_TOKENS], vocab, seed=args.seed + 7)
    ids1 = batch_to_ids(sent).to(device)
    for i, bs in enumerate(sizes):
        ids = batch_to_ids(make_sentences(bs, lengths, vocab, seed=args.seed + bs))
        _throughput(record, models, seen, bs, ids, device, cfg["budget"], floors, flush)
        if i == 0:
            _latency(record, models, ids1, device, cfg["latency_reps"], flush)

    record["complete"] = True
    flush()
    for p in (args.json_path, args.md_path):
        if p:
            print(f"  wrote {p}")
    if args.plot_path:
        print(f"  {plot(record, args.plot_path)}")
    print()
    print(summary_table(record))
    failed = [k for k in record["skipped"] if "@" in k]
    return 1 if failed else 0


def display_source(src: str) -> str:
    """A source description as a record stores it: a path made relative (report.display_path)."""
    return display_path(src) if os.path.isabs(src) and os.path.exists(src) else src


def _throughput(record, models, seen, bs: int, ids: torch.Tensor, device, budget: float, floors,
                flush) -> None:
    """Tokens/s of every variant at one batch, and each variant's error against the reference."""
    ntok = int((ids > 0).any(-1).sum())
    ids = ids.to(device)
    outs: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    for v, (m, call) in models.items():
        try:
            if v == "allennlp":
                reset_allennlp_states(m)
            rep, mask = call(ids)  # stateless first call: the output compared below
            if seen.get(v):
                record["backends"][v] = dict(seen[v])
            outs[v] = (rep.detach(), mask)
            t = time_calls(lambda: call(ids), device, budget)
        except Exception as exc:
            record["skipped"][f"{v}@{bs}"] = f"{type(exc).__name__}: {exc}"
            print(f"  {v} batch {bs}: FAILED {record['skipped'][f'{v}@{bs}']}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            flush()
            continue
        tps = ntok / t["median_s"]
        dt = "bfloat16" if v == "fast-bf16" else "float32"
        record["throughput"].append({
            "variant": v, "batch_size": bs, "tokens": ntok, "max_len": int(ids.shape[1]),
            "seconds": t["median_s"], "tokens_per_s": tps, "timing": t, "dtype": dt,
            "fraction_of_floor": tps / floors[dt] if dt in floors else None,
            "fraction_of_bf16_floor": tps / floors["bfloat16"] if "bfloat16" in floors else None})
        print(f"  batch {bs:5d} ({ntok:6d} tokens)  {v:10s} {tps:12,.0f} tokens/s  "
              f"({t['median_s'] * 1e3:9.2f} ms/batch)", flush=True)
        flush()
    if "reference" in outs:
        ref, mask = outs["reference"]
        for v, (o, _) in outs.items():
            if v == "reference":
                continue
            e = compare(o, ref, mask)
            e.update({"variant": v, "batch_size": bs, "against": "reference fp32"})
            record["errors"].append(e)
            print(f"  batch {bs:5d}  {v:10s} vs reference: max abs {e['max_abs']:.2e}, "
                  f"rel RMS {e['rel_rms']:.2e}", flush=True)
        flush()


def _latency(record, models, ids1: torch.Tensor, device, reps: int, flush) -> None:
    """p50 / p99 of one sentence of LATENCY_TOKENS tokens, every variant."""
    for v, (m, call) in models.items():
        try:
            record["latency"][v] = lat = latency(lambda: call(ids1), device, reps)
            print(f"  latency 1x{LATENCY_TOKENS} tokens  {v:10s} p50 {lat['p50_ms']:8.2f} ms  "
                  f"p99 {lat['p99_ms']:8.2f} ms", flush=True)
        except Exception as exc:
            record["skipped"][f"latency-{v}"] = f"{type(exc).__name__}: {exc}"
        flush()


def summary_table(rec: Dict[str, Any]) -> str:
    """Tokens/s per batch size (rows) and variant (columns), plain text."""
    variants = [v for v in rec["variants"] if any(r["variant"] == v for r in rec["throughput"])]
    head = f"{'batch':>6} " + " ".join(f"{v:>14}" for v in variants)
    lines = [f"tokens/s ({rec['arch']}, {rec['environment'].get('gpu') or rec['environment']['cpu']})", head]
    for bs in sorted(rec["batch_sizes"]):
        cells = []
        for v in variants:
            r = [x for x in rec["throughput"] if x["variant"] == v and x["batch_size"] == bs]
            cells.append(f"{r[0]['tokens_per_s']:14,.0f}" if r else f"{'-':>14}")
        lines.append(f"{bs:>6} " + " ".join(cells))
    return "\n".join(lines)


def to_markdown(rec: Dict[str, Any]) -> str:
    e = rec["environment"]
    fpt = rec["flops_per_token"]
    lines = [
        f"# elmo-fast bench: {rec['arch']} architecture on {e.get('gpu') or e['cpu']}"
        + ("" if rec.get("complete") else " (INCOMPLETE: the run stopped early)"),
        "",
        f"- date: {e['date']}; commit `{e['commit']}`{' (uncommitted changes)' if e['dirty'] else ''}",
        f"- command: `{e['command']}`",
        f"- device: {e['device']}; GPU: {e.get('gpu')}; driver: {e.get('driver')}; CPU: {e['cpu']} "
        f"({e['cpu_count']} cores, torch threads {e['torch_threads']})",
        f"- torch {e['torch']}, CUDA {e['cuda']}, triton {e['triton']}, Python {e['python']}, "
        f"elmo_fast {e['elmo_fast']}; fast variants' backend: {rec.get('fast_backend', 'auto')}; "
        "fp32 variants with TF32 off",
        f"- model: random weights, {rec['arch']} shape; {fpt['total'] / 1e6:.1f} MFLOP/token (all 50 char "
        f"windows; LSTM {fpt['lstm'] / 1e6:.1f}, char CNN {fpt['char_cnn'] / 1e6:.1f}, highway "
        f"{fpt['highway'] / 1e6:.1f})",
        f"- sentences: lengths from {rec['sentence_lengths_from']} (mean {rec['mean_sentence_length']:.1f} "
        f"tokens), words from {rec['vocabulary_from']}; tokens/s counts real tokens",
        "",
        "## Matmul ceiling and floor",
        "",
        "| dtype | matmul TFLOP/s (measured) | floor tokens/s |",
        "|---|---|---|",
    ]
    for k, v in rec.get("matmul_ceiling", {}).items():
        lines.append(f"| {k} | {v['flops_per_s'] / 1e12:.2f} (n={v['n']}) | "
                     f"{rec['floor_tokens_per_s'][k]:,.0f} |")
    lines += ["", "## Throughput", "",
              "| batch | variant | tokens | ms/batch | tokens/s | fraction of floor (own dtype) | timer |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(rec["throughput"], key=lambda r: (r["batch_size"], VARIANTS.index(r["variant"]))):
        frac = f"{r['fraction_of_floor'] * 100:.2f}%" if r["fraction_of_floor"] is not None else "-"
        lines.append(f"| {r['batch_size']} | {r['variant']} ({r['dtype']}) | {r['tokens']} | "
                     f"{r['seconds'] * 1e3:.2f} | {r['tokens_per_s']:,.0f} | {frac} | "
                     f"{r['timing']['timer']} |")
    lines += ["", f"## Latency: one sentence of {LATENCY_TOKENS} tokens", "",
              "| variant | p50 ms | p99 ms | calls |", "|---|---|---|---|"]
    for v, lat in rec["latency"].items():
        lines.append(f"| {v} | {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['reps']} |")
    lines += ["", "## Error against the fp32 reference (same inputs, real positions)", "",
              "| batch | variant | max abs | relative RMS |", "|---|---|---|---|"]
    for r in rec["errors"]:
        lines.append(f"| {r['batch_size']} | {r['variant']} | {r['max_abs']:.3e} | {r['rel_rms']:.3e} |")
    if rec["backends"]:
        lines += ["", "## Backends chosen", ""]
        for v, b in rec["backends"].items():
            lines.append(f"- {v}: " + ", ".join(f"{op}={name}" for op, name in sorted(b.items())))
    if rec["skipped"]:
        lines += ["", "## Skipped or failed", ""]
        for k, why in rec["skipped"].items():
            lines.append(f"- {k}: {why}")
    lines += ["", "```", summary_table(rec), "```", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="elmo-fast bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
