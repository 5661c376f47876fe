"""`elmo-fast bench`: end-to-end throughput, latency and accuracy of elmo_fast beside allennlp.

What one run measures, all on the same inputs and the same random-weight model (written once in
the bilm-tf file layout by `elmo_fast.synthetic` and cached):

  * tokens/s of `Elmo.forward` for each batch size (sentences per batch) and each variant:
      reference   fp32, ELMO_FAST_BACKEND=torch (the pure-PyTorch path, the test oracle)
      fast        fp32, ELMO_FAST_BACKEND=auto  (Triton char CNN / highway, CUDA LSTM on a GPU)
      fast-bf16   the same module cast with .to(torch.bfloat16)
      allennlp    allennlp 0.9's own Elmo (dropout 0, eval, no_grad), loaded from its wheel
  * single-sentence latency (one sentence of 20 tokens): p50 and p99 over many calls
  * a measured matmul ceiling (bf16 and fp32) and from it the floor of the model:
      floor tokens/s = ceiling FLOP/s / FLOPs per token (GUIDE section 6: ~204 MFLOP/token for the
      original architecture), and each variant's achieved fraction of its dtype's floor
  * the error of every variant against the fp32 reference on the same batch: max abs and
    relative RMS over real (unmasked) positions of the ELMo representation

Every record carries the machine (GPU or CPU name, driver, torch / triton / CUDA versions), the
commit, the date and the command line. Tokens are real tokens (not <S>/</S>, not padding). Models
run stateless (each sentence from a zero state) so runs are reproducible; allennlp is stateful
and its states are reset before the call whose output is compared.

Timing: on a GPU, triton.testing.do_bench for calls under ~50 ms, else torch.cuda.synchronize
around time.perf_counter; on the CPU, time.perf_counter. Each measurement gets a time budget
(--budget seconds) and runs as many repetitions as fit (at least one after a warm-up call).

    elmo-fast bench --device cuda --json r.json --md r.md --plot r.png
    python -m elmo_fast.bench --quick          (CPU dry run: small arch, batches 1 and 4)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _config

REPO = pathlib.Path(__file__).resolve().parents[2]  # src/elmo_fast/bench.py -> checkout root

# Sentence lengths (whitespace tokens) of the shared fixture's 30 sentences, used when the fixture
# itself is not beside the checkout (e.g. on the GPU machine).
FIXTURE_LENGTHS = [50, 51, 27, 3, 37, 11, 43, 29, 24, 20, 16, 11, 26, 13, 43, 13, 24, 13, 53, 5,
                   53, 51, 16, 17, 11, 19, 28, 12, 16, 9]
VARIANTS = ("reference", "fast", "fast-bf16", "allennlp")
LATENCY_TOKENS = 20


# ----------------------------------------------------------------------------------------------
# inputs: model files, sentences
# ----------------------------------------------------------------------------------------------

def shared_dirs() -> List[pathlib.Path]:
    """Where ../shared may be: beside the checkout (development), inside it (the GPU machine)."""
    return [REPO.parent / "shared", REPO / "shared"]


def fixtures_dir() -> Optional[pathlib.Path]:
    env = os.environ.get("ELMO_FAST_FIXTURES")
    cands = ([pathlib.Path(env)] if env else []) + [d / "fixtures" / "elmo" for d in shared_dirs()]
    for c in cands:
        if (c / "sentences.json").exists():
            return c
    return None


def sentence_lengths() -> Tuple[List[int], str]:
    """Token counts of the fixture sentences, and where they came from."""
    fx = fixtures_dir()
    if fx is not None:
        with open(fx / "sentences.json") as f:
            sents = json.load(f)
        lengths = [len(s.split()) for group in sents for s in group]
        if lengths:
            return lengths, str(fx / "sentences.json")
    return list(FIXTURE_LENGTHS), "built-in copy of the fixture sentence lengths"


def vocabulary() -> Tuple[List[str], str]:
    """Words to draw tokens from: the fixture's vocab_test.txt and sentences, else generated."""
    fx = fixtures_dir()
    if fx is not None:
        words = set()
        vt = fx / "vocab_test.txt"
        if vt.exists():
            words.update(w for w in vt.read_text(encoding="utf-8").split("\n") if w)
        with open(fx / "sentences.json") as f:
            for group in json.load(f):
                for s in group:
                    words.update(s.split())
        if words:
            return sorted(words), str(fx)
    rng = np.random.default_rng(1234)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    p = np.linspace(2.0, 0.2, len(letters))
    p /= p.sum()
    words = {"".join(rng.choice(letters, size=int(rng.integers(1, 12)), p=p)) for _ in range(3000)}
    return sorted(words), "generated pseudo-words"


def make_sentences(n: int, lengths: Sequence[int], vocab: Sequence[str], seed: int = 0) -> List[List[str]]:
    """n sentences whose lengths are drawn from `lengths`, words drawn Zipf-like from `vocab`."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    order = rng.permutation(len(vocab))  # which word gets which rank
    out = []
    for k in rng.choice(np.asarray(lengths), size=n):
        idx = order[rng.choice(len(vocab), size=int(k), p=p)]
        out.append([vocab[i] for i in idx])
    return out


def cache_root() -> pathlib.Path:
    """$ELMO_FAST_BENCH_CACHE, else $ELMO_FAST_CACHE/bench, else ~/.cache/elmo_fast/bench."""
    env = os.environ.get("ELMO_FAST_BENCH_CACHE")
    return pathlib.Path(env) if env else pathlib.Path(_config.cache_root("bench"))


def model_files(arch: str, seed: int = 0, cache_dir: Optional[str] = None) -> Tuple[str, str]:
    """(options.json, weights.hdf5) of a random-weight model of `arch`, written once and cached."""
    from . import synthetic

    d = pathlib.Path(cache_dir) if cache_dir else cache_root() / f"{arch}-seed{seed}"
    opath, wpath = d / "options.json", d / "weights.hdf5"
    done = d / "COMPLETE"
    if not done.exists():
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=_mkdir(d.parent)))
        synthetic.write_model(str(tmp), synthetic.make_options(arch), seed=seed)
        d.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "options.json", opath)
        os.replace(tmp / "weights.hdf5", wpath)
        tmp.rmdir()
        done.write_text("written by elmo_fast.bench.model_files\n")
    return str(opath), str(wpath)


def _mkdir(p: pathlib.Path) -> str:
    p.mkdir(parents=True, exist_ok=True)
    return str(p)


def flops_per_token(options: Dict[str, Any], chars: int = 50) -> Dict[str, float]:
    """FLOPs (2 per multiply-add) per token for every window of a `chars`-long token (GUIDE 6)."""
    cc, ls = options["char_cnn"], options["lstm"]
    E = cc["embedding"]["dim"]
    F = sum(n for _, n in cc["filters"])
    P, C, L = ls["projection_dim"], ls["dim"], ls["n_layers"]
    cnn = sum(2.0 * (chars - w + 1) * w * E * n for w, n in cc["filters"])
    highway = cc["n_highway"] * 2 * 2.0 * F * F
    proj = 2.0 * F * P
    per_dir_layer_in = 2.0 * P * 4 * C
    per_dir_layer_rec = 2.0 * P * 4 * C + 2.0 * C * P
    lstm = 2 * L * (per_dir_layer_in + per_dir_layer_rec)
    return {"char_cnn": cnn, "highway": highway, "projection": proj, "lstm": lstm,
            "lstm_recurrent": 2 * L * per_dir_layer_rec, "total": cnn + highway + proj + lstm}


# ----------------------------------------------------------------------------------------------
# environment record
# ----------------------------------------------------------------------------------------------

def _run(cmd: List[str], cwd: Optional[str] = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    env: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "commit": _run(["git", "rev-parse", "HEAD"], str(REPO)) or "unknown",
        "dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], str(REPO))),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "hostname": platform.node(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as exc:
        env["triton"] = f"not importable ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["gpu_sms"] = props.multi_processor_count
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["driver"] = smi.split("\n")[0]
    else:
        env["gpu"] = None
        env["driver"] = None
    try:
        from importlib import metadata
        env["elmo_fast"] = metadata.version("elmo_fast")
    except Exception:
        env["elmo_fast"] = "unknown"
    return env


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_calls(fn: Callable[[], Any], device: torch.device, reps: int) -> List[float]:
    """Wall seconds of each of `reps` calls of fn, each synchronised before and after."""
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def time_calls(fn: Callable[[], Any], device: torch.device, budget_s: float, max_reps: int = 50,
               min_reps: int = 1) -> Dict[str, Any]:
    """Per-call seconds of fn: one warm-up call, then as many as fit in budget_s (median, min)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if device.type == "cuda" and first < 0.05:
        try:
            from triton.testing import do_bench
            q = do_bench(fn, warmup=25, rep=max(50, int(budget_s * 1000)), quantiles=[0.5, 0.2, 0.8])
            return {"median_s": q[0] / 1e3, "p20_s": q[1] / 1e3, "p80_s": q[2] / 1e3, "timer": "do_bench",
                    "first_call_s": first}
        except Exception:
            pass
    reps = int(max(min_reps, min(max_reps, budget_s // max(first, 1e-6))))
    times = _timed_calls(fn, device, reps)
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": reps,
            "timer": "perf_counter+sync" if device.type == "cuda" else "perf_counter", "first_call_s": first}


def latency(fn: Callable[[], Any], device: torch.device, reps: int) -> Dict[str, float]:
    """p50 / p99 wall time of single calls (each synchronised)."""
    fn()
    times = _timed_calls(fn, device, reps)
    a = np.array(times)
    return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3),
            "mean_ms": float(a.mean() * 1e3), "reps": reps}


def matmul_ceiling(device: torch.device, dtype: torch.dtype, quick: bool) -> Dict[str, Any]:
    """Measured dense matmul rate (FLOP/s) in `dtype` on `device`."""
    n = (512 if quick else 2048) if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    r = time_calls(lambda: a @ b, device, budget_s=0.5 if quick else 2.0, max_reps=20)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "flops_per_s": 2.0 * n ** 3 / r["median_s"],
            "timer": r["timer"]}


@contextlib.contextmanager
def backend(name: str):
    """Sets ELMO_FAST_BACKEND for the duration (read by elmo_fast on every op call)."""
    old = os.environ.get("ELMO_FAST_BACKEND")
    os.environ["ELMO_FAST_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ELMO_FAST_BACKEND", None)
        else:
            os.environ["ELMO_FAST_BACKEND"] = old


@contextlib.contextmanager
def record_backends(seen: Dict[str, str]):
    """Records which backend each op picked (wraps the dispatcher's select while active)."""
    from .ops import _dispatch

    orig = _dispatch.Op.select

    def select(self, **inputs):
        b = orig(self, **inputs)
        seen[self.name] = b.name
        return b

    _dispatch.Op.select = select
    try:
        yield seen
    finally:
        _dispatch.Op.select = orig


# ----------------------------------------------------------------------------------------------
# allennlp
# ----------------------------------------------------------------------------------------------

def allennlp_tool_path() -> Optional[pathlib.Path]:
    env = os.environ.get("ELMO_ALLENNLP_TOOL")
    cands = ([pathlib.Path(env)] if env else []) + [d / "tools" / "allennlp_elmo.py" for d in shared_dirs()]
    cands.append(REPO / ".whl" / "allennlp_elmo.py")
    for c in cands:
        if c.is_file():
            return c
    return None


def load_allennlp():
    """allennlp 0.9's (Elmo, batch_to_ids) through shared/tools/allennlp_elmo.py."""
    import importlib.util

    tool = allennlp_tool_path()
    if tool is None:
        raise FileNotFoundError("allennlp_elmo.py not found (set ELMO_ALLENNLP_TOOL, or keep ../shared/tools "
                                "beside the checkout)")
    if not os.environ.get("ELMO_ALLENNLP_WHEEL"):
        wheel = "allennlp-0.9.0-py3-none-any.whl"
        for c in [tool.parent / wheel, REPO / ".whl" / wheel]:
            if c.is_file():
                os.environ["ELMO_ALLENNLP_WHEEL"] = str(c)
                break
    spec = importlib.util.spec_from_file_location("allennlp_elmo", str(tool))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["allennlp_elmo"] = mod
    spec.loader.exec_module(mod)
    return mod.load()


def reset_allennlp_states(elmo) -> None:
    lstm = getattr(getattr(elmo, "_elmo_lstm", None), "_elmo_lstm", None)
    if lstm is not None and hasattr(lstm, "reset_states"):
        lstm.reset_states()


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

def compare(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> Dict[str, float]:
    """max abs and relative RMS error of out against ref over mask [B, T] positions."""
    m = mask.bool()
    a = out.float()[m]
    b = ref.float()[m]
    if a.numel() == 0:
        return {"max_abs": 0.0, "rel_rms": 0.0}
    d = a - b
    rms_ref = float(b.pow(2).mean().sqrt())
    return {"max_abs": float(d.abs().max()), "rel_rms": float(d.pow(2).mean().sqrt()) / max(rms_ref, 1e-30)}


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default=None, help="cuda | cpu | cuda:N (default: cuda when available)")
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated sentences per batch (default: 1,32,256,1024 on a GPU; "
                             "1,32 on the CPU; --quick: 1,4)")
    parser.add_argument("--arch", default=None, choices=["original", "medium", "small"],
                        help="model architecture, random weights (default: original; --quick: small)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per (variant, batch size) (default 2; --quick 0.3)")
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
        sizes = [int(s) for s in str(args.batch_sizes).split(",") if s.strip()]
    elif args.quick:
        sizes = [1, 4]
    else:
        sizes = [1, 32, 256, 1024] if device.type == "cuda" else [1, 32]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    return {
        "device": device,
        "sizes": sizes,
        "arch": args.arch or ("small" if args.quick else "original"),
        "variants": variants,
        "budget": args.budget if args.budget is not None else (0.3 if args.quick else 2.0),
        "latency_reps": args.latency_reps or (5 if args.quick else (200 if device.type == "cuda" else 20)),
    }


def _build(variant: str, opath: str, wpath: str, device: torch.device, allennlp_elmo=None):
    """(module, call(ids) -> (representation, mask)) for a variant."""
    if variant == "allennlp":
        Elmo, _ = allennlp_elmo
        m = Elmo(opath, wpath, num_output_representations=1, dropout=0.0).eval().to(device)

        def call(ids):
            with torch.no_grad():
                out = m(ids)
            return out["elmo_representations"][0], out["mask"]
        return m, call

    from .modules import Elmo

    m = Elmo(opath, wpath, num_output_representations=1, dropout=0.0, stateful=False).eval().to(device)
    if variant == "fast-bf16":
        m = m.to(torch.bfloat16)
    env = "torch" if variant == "reference" else "auto"

    def call(ids):
        with backend(env), torch.inference_mode():
            out = m(ids)
        return out["elmo_representations"][0], out["mask"]
    return m, call


def run(args) -> int:
    cfg = _resolve(args)
    device, sizes, arch, variants = cfg["device"], cfg["sizes"], cfg["arch"], cfg["variants"]
    torch.manual_seed(args.seed)
    env = environment(device)
    t_start = time.perf_counter()
    print(f"elmo-fast bench: arch={arch} device={device} batch sizes={sizes} variants={variants}", flush=True)
    print(f"  {env.get('gpu') or env['cpu']}; torch {env['torch']} (CUDA {env['cuda']}), "
          f"triton {env['triton']}, "
          f"{env['torch_threads']} threads; commit {env['commit'][:12]}{' (dirty)' if env['dirty'] else ''}",
          flush=True)

    opath, wpath = model_files(arch, seed=args.seed)
    with open(opath) as f:
        options = json.load(f)
    fpt = flops_per_token(options)
    lengths, lengths_src = sentence_lengths()
    vocab, vocab_src = vocabulary()
    from .chars import batch_to_ids

    record: Dict[str, Any] = {
        "kind": "elmo-fast bench", "environment": env, "arch": arch, "model_files": [opath, wpath],
        "flops_per_token": fpt, "sentence_lengths_from": lengths_src, "vocabulary_from": vocab_src,
        "mean_sentence_length": float(np.mean(lengths)), "variants": variants, "batch_sizes": sizes,
        "throughput": [], "latency": {}, "errors": [], "skipped": {}, "backends": {},
    }

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

    # ---- models
    allen = None
    if "allennlp" in variants:
        try:
            allen = load_allennlp()
        except Exception as exc:
            record["skipped"]["allennlp"] = f"{type(exc).__name__}: {exc}"
            print(f"  allennlp skipped: {record['skipped']['allennlp']}", flush=True)
    models: Dict[str, Tuple[Any, Callable]] = {}
    for v in variants:
        if v == "allennlp" and allen is None:
            continue
        try:
            models[v] = _build(v, opath, wpath, device, allen)
        except Exception as exc:
            record["skipped"][v] = f"{type(exc).__name__}: {exc}"
            print(f"  {v} skipped: {record['skipped'][v]}", flush=True)

    # ---- throughput and errors
    for bs in sizes:
        sents = make_sentences(bs, lengths, vocab, seed=args.seed + bs)
        ntok = sum(len(s) for s in sents)
        ids = batch_to_ids(sents).to(device)
        outs: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        for v, (m, call) in models.items():
            try:
                if v == "allennlp":
                    reset_allennlp_states(m)
                seen: Dict[str, str] = {}
                with record_backends(seen):
                    rep, mask = call(ids)  # stateless first call: the output compared below
                if seen:
                    record["backends"][v] = dict(seen)
                outs[v] = (rep.detach(), mask)
                t = time_calls(lambda: call(ids), device, cfg["budget"])
            except Exception as exc:
                record["skipped"][f"{v}@{bs}"] = f"{type(exc).__name__}: {exc}"
                print(f"  {v} batch {bs}: FAILED {record['skipped'][f'{v}@{bs}']}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            tps = ntok / t["median_s"]
            dt = "bfloat16" if v == "fast-bf16" else "float32"
            row = {"variant": v, "batch_size": bs, "tokens": ntok, "max_len": int(ids.shape[1]),
                   "seconds": t["median_s"], "tokens_per_s": tps, "timing": t, "dtype": dt,
                   "fraction_of_floor": tps / floors[dt] if dt in floors else None,
                   "fraction_of_bf16_floor": tps / floors["bfloat16"] if "bfloat16" in floors else None}
            record["throughput"].append(row)
            print(f"  batch {bs:5d} ({ntok:6d} tokens)  {v:10s} {tps:12,.0f} tokens/s  "
                  f"({t['median_s'] * 1e3:9.2f} ms/batch)", flush=True)
        if "reference" in outs:
            ref, mask = outs["reference"]
            for v, (o, om) in outs.items():
                if v == "reference":
                    continue
                e = compare(o, ref, mask)
                e.update({"variant": v, "batch_size": bs, "against": "reference fp32"})
                record["errors"].append(e)
                print(f"  batch {bs:5d}  {v:10s} vs reference: max abs {e['max_abs']:.2e}, "
                      f"rel RMS {e['rel_rms']:.2e}", flush=True)
        del outs

    # ---- latency: one sentence of LATENCY_TOKENS tokens
    sent = make_sentences(1, [LATENCY_TOKENS], vocab, seed=args.seed + 7)
    ids1 = batch_to_ids(sent).to(device)
    for v, (m, call) in models.items():
        try:
            record["latency"][v] = latency(lambda: call(ids1), device, cfg["latency_reps"])
            lat = record["latency"][v]
            print(f"  latency 1x{LATENCY_TOKENS} tokens  {v:10s} p50 {lat['p50_ms']:8.2f} ms  "
                  f"p99 {lat['p99_ms']:8.2f} ms", flush=True)
        except Exception as exc:
            record["skipped"][f"latency-{v}"] = f"{type(exc).__name__}: {exc}"

    record["wall_s"] = time.perf_counter() - t_start
    if args.json_path:
        _write(args.json_path, json.dumps(record, indent=1, default=str))
        print(f"  wrote {args.json_path}")
    if args.md_path:
        _write(args.md_path, to_markdown(record))
        print(f"  wrote {args.md_path}")
    if args.plot_path:
        msg = plot(record, args.plot_path)
        print(f"  {msg}")
    print()
    print(summary_table(record))
    failed = [k for k in record["skipped"] if "@" in k]
    return 1 if failed else 0


def _write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def summary_table(rec: Dict[str, Any]) -> str:
    """Tokens/s per batch size (rows) and variant (columns), plain text."""
    variants = [v for v in rec["variants"] if any(r["variant"] == v for r in rec["throughput"])]
    head = f"{'batch':>6} " + " ".join(f"{v:>14}" for v in variants)
    lines = [f"tokens/s ({rec['arch']}, {rec['environment'].get('gpu') or rec['environment']['cpu']})", head]
    for bs in rec["batch_sizes"]:
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
        f"# elmo-fast bench: {rec['arch']} architecture on {e.get('gpu') or e['cpu']}",
        "",
        f"- date: {e['date']}; commit `{e['commit']}`{' (uncommitted changes)' if e['dirty'] else ''}",
        f"- command: `{e['command']}`",
        f"- device: {e['device']}; GPU: {e.get('gpu')}; driver: {e.get('driver')}; CPU: {e['cpu']} "
        f"({e['cpu_count']} cores, torch threads {e['torch_threads']})",
        f"- torch {e['torch']}, CUDA {e['cuda']}, triton {e['triton']}, Python {e['python']}, "
        f"elmo_fast {e['elmo_fast']}",
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
    for k, v in rec["matmul_ceiling"].items():
        lines.append(f"| {k} | {v['flops_per_s'] / 1e12:.2f} (n={v['n']}) | "
                     f"{rec['floor_tokens_per_s'][k]:,.0f} |")
    lines += ["", "## Throughput", "",
              "| batch | variant | tokens | ms/batch | tokens/s | fraction of floor (own dtype) | timer |",
              "|---|---|---|---|---|---|---|"]
    for r in rec["throughput"]:
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


def plot(rec: Dict[str, Any], path: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"no plot: matplotlib is not installed ({type(exc).__name__})"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in rec["variants"]:
        rows = sorted((r for r in rec["throughput"] if r["variant"] == v), key=lambda r: r["batch_size"])
        if rows:
            ax.plot([r["batch_size"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", label=v)
    for k, f in rec["floor_tokens_per_s"].items():
        ax.axhline(f, linestyle="--", linewidth=0.8, color="grey")
        ax.annotate(f"floor {k}", (rec["batch_sizes"][0], f), fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sentences per batch")
    ax.set_ylabel("tokens / s")
    e = rec["environment"]
    ax.set_title(f"ELMo {rec['arch']} on {e.get('gpu') or e['cpu']} ({e['commit'][:8]})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="elmo-fast bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
