"""`elmo-fast embed | merge | info | bench`: the command line.

  elmo-fast embed INPUT OUTPUT (--all | --top | --average) [--model NAME_OR_PATH | --options P --weights P]
      allennlp's `allennlp elmo`: one whitespace-tokenised sentence per line -> hdf5 (see
      `elmo_fast.corpus` for the layouts, batching, pieces, resume and shards).
  elmo-fast merge OUTPUT SHARD...
      joins `embed --shard I/N` outputs into the file one process writes.
  elmo-fast models [--json]
      the model registry, and which models are packaged or cached here.
  elmo-fast info [--json]
      versions, CUDA, configuration, and which backend each op runs on here and why the others don't.
  elmo-fast bench ...
      benchmarks (elmo_fast.bench).

Errors the user can fix (bad input, missing model or GPU, malformed weights) print one line,
`elmo-fast: error: ...`, and exit with status 2; no output file is left behind.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

PROG = "elmo-fast"
EXIT_USAGE = 2
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


class CliError(Exception):
    """A problem to report in one line (exit status 2)."""


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename and str(exc).startswith("[Errno"):
        return f"{exc.strerror}: {exc.filename}"  # not "[Errno 13] Permission denied: '/x'"
    msg = str(exc).strip() or type(exc).__name__
    return " ".join(msg.split("\n"))


# ------------------------------------------------------------------------------------------ parser
def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed", help="embed a corpus into an hdf5 file (like `allennlp elmo`)",
        description="Embeds INPUT (UTF-8, one whitespace-tokenised sentence per line; '-' reads stdin) "
                    "into OUTPUT, an hdf5 file in allennlp's layout: one float32 dataset per sentence "
                    "keyed by its line index, plus 'sentence_to_index'. The default stateful mode "
                    "batches in input order and reproduces `allennlp elmo`; --stateless batches "
                    "sentences by length and makes each output independent of the others. OUTPUT is "
                    "written under a temporary name and renamed into place only when complete.")
    p.add_argument("input_file", metavar="INPUT", help="input text file ('-' for stdin)")
    p.add_argument("output_file", metavar="OUTPUT", help="output hdf5 file")
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--all", dest="output_format", action="store_const", const="all",
                     help="all layers: [3, T, D] per sentence")
    fmt.add_argument("--top", dest="output_format", action="store_const", const="top",
                     help="the top layer: [T, D]")
    fmt.add_argument("--average", dest="output_format", action="store_const", const="average",
                     help="the average of the layers: [T, D]")
    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="NAME_OR_PATH",
                   help="registry name (small, medium, original, original-5.5B), a directory holding "
                        "options.json + weights.hdf5, or one of the files (default: original)")
    m.add_argument("--options", "--options-file", dest="options", metavar="PATH",
                   help="options.json (path or URL); with --weights instead of --model")
    m.add_argument("--weights", "--weight-file", dest="weights", metavar="PATH",
                   help="weights.hdf5 (path or URL); with --options instead of --model")
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    r.add_argument("--batch-tokens", type=int, metavar="N",
                   help="at most N tokens per batch, padding included (rows x longest sentence); bounds "
                        "a batch's memory whatever the sentence lengths (a longer sentence is a batch alone)")
    r.add_argument("--bucket-window", type=int, metavar="N", default=None,
                   help="stateless / warm start: sentences are sorted by length inside look-ahead windows "
                        "of N sentences (default 1024); memory holds one window of outputs")
    dev = r.add_mutually_exclusive_group()
    dev.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    dev.add_argument("--cuda-device", type=int, metavar="N",
                     help="allennlp's spelling: GPU index, -1 for the CPU")
    r.add_argument("--stateless", action="store_true",
                   help="start every sentence from a zero state (deterministic: independent of batching "
                        "and order; batches grouped by length); default: allennlp's stateful mode")
    r.add_argument("--warm-start", action="store_true",
                   help="start sentences from a fixed state reached by reading a built-in warm-up text, "
                        "instead of zeros (with --stateless: deterministic and closer to stateful output)")
    r.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="compute dtype (bf16: fp32 accumulation; output is float32 either way)")
    i = p.add_argument_group("input")
    i.add_argument("--empty-lines", choices=("error", "skip", "keep"), default="error",
                   help="empty lines: refuse them (default, as allennlp), skip them, or keep them as "
                        "zero-token sentences so that sentence i is line i")
    o = p.add_argument_group("output")
    o.add_argument("--layout", choices=("allennlp", "flat"), default="allennlp",
                   help="allennlp: one dataset per sentence (default, compatible); flat: per stored "
                        "layer one [total_tokens, D] dataset + offsets, much faster to write and read")
    o.add_argument("--dtype-out", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="dtype of the stored vectors (bfloat16: uint16 bits with a dtype attribute; "
                        "elmo_fast.open_embeddings decodes it)")
    o.add_argument("--pool", choices=("none", "mean"), default="none",
                   help="mean: one vector per sentence (the mean over its tokens) instead of one per token")
    o.add_argument("--forget-sentences", action="store_true",
                   help="omit the 'sentence_to_index' dataset")
    o.add_argument("--use-sentence-keys", action="store_true",
                   help="key each dataset by its sentence instead of its line index (sentences must be "
                        "distinct)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    j = p.add_argument_group("long jobs")
    j.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into OUTPUT from its completed pieces (stateless / warm "
                        "start; the result equals an uninterrupted run's)")
    j.add_argument("--shard", metavar="I/N",
                   help="embed only shard I of N (contiguous ranges of sentences; stateless); join the shard "
                        "outputs with `elmo-fast merge`")
    j.add_argument("--piece-sentences", type=int, default=100_000, metavar="N",
                   help="a completed piece (what --resume keeps) every N sentences (default 100000) or 10 "
                        "minutes, whichever comes first")
    from .ray import add_cli_arguments  # imports without Ray; --ray itself needs the [ray] extra

    add_cli_arguments(p)
    p.set_defaults(func=cmd_embed)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="join shard outputs into one file",
                       description="Joins the outputs of `elmo-fast embed --shard I/N` runs "
                                   "(any order; their "
                                   "sentence ranges must follow each other, from one model and the same "
                                   "settings) into OUTPUT, the file one process would have written. OUTPUT "
                                   "is written under a temporary name and renamed into place when complete.")
    p.add_argument("output_file", metavar="OUTPUT", help="output hdf5 file")
    p.add_argument("shards", metavar="SHARD", nargs="+", help="shard output files")
    p.set_defaults(func=cmd_merge)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, CUDA, and the backend each op runs on here",
                       description="Prints versions, CUDA availability, configuration (ELMO_FAST_BACKEND, "
                                   "TRITON_INTERPRET), and for every op the backend that runs on this "
                                   "machine and why the faster ones do not.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", help="device the op check uses (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype the op check uses")
    p.add_argument("--arch", choices=("small", "medium", "original"), default="original",
                   help="model shapes the op check uses (default: original)")
    p.add_argument("--backend", choices=("auto", "cuda", "triton", "torch"),
                   help="check the ops under this backend choice (default: ELMO_FAST_BACKEND, else auto)")
    p.set_defaults(func=cmd_info)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="the model registry and what is cached here",
                       description="Lists the registry names --model accepts, what each model is, its "
                                   "download URLs, and whether it is packaged, cached (downloaded) or not "
                                   "yet downloaded into the cache ($ELMO_FAST_CACHE/models or "
                                   "~/.cache/elmo_fast/models).")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)


def _add_bench(sub, bench_module) -> None:
    p = sub.add_parser("bench", help="benchmarks (elmo_fast.bench)",
                       description="Benchmarks; see elmo_fast.bench.")
    if bench_module is not None:
        bench_module.add_arguments(p)
    p.set_defaults(func=cmd_bench, bench_module=bench_module)


def build_parser(bench_module=None) -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="A fast, faithful ELMo engine.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{embed,merge,models,info,bench}")
    sub.required = True
    _add_embed(sub)
    _add_merge(sub)
    _add_models(sub)
    _add_info(sub)
    _add_bench(sub, bench_module)
    return parser


def _load_bench():
    """elmo_fast.bench, or CliError saying why it cannot be used."""
    try:
        module = importlib.import_module("elmo_fast.bench")
    except ImportError as e:
        if getattr(e, "name", None) == "elmo_fast.bench":
            raise CliError("the benchmark module elmo_fast.bench is not installed in this build") from None
        raise CliError(f"the benchmark module elmo_fast.bench could not be imported "
                       f"({type(e).__name__}: {e})") from None
    missing = [a for a in ("add_arguments", "run") if not callable(getattr(module, a, None))]
    if missing:
        raise CliError(f"elmo_fast.bench lacks {' and '.join(missing)}()")
    return module


# ------------------------------------------------------------------------------------------- embed
def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(args) -> str:
    """The device `embed` runs on, checked together with --dtype (bf16 is refused on the CPU)."""
    if args.cuda_device is not None:
        name = "cpu" if args.cuda_device < 0 else f"cuda:{args.cuda_device}"
    else:
        name = args.device or _default_device()
    device = _check_device(name)
    if getattr(args, "dtype", None) == "bf16" and device == "cpu":
        raise CliError("--dtype bf16 is refused on the CPU: there it runs about 26x slower than fp32 (no "
                       "fast low-precision CPU kernels); use --dtype fp32, or bf16 with --device cuda")
    return device


def _check_device(name: str) -> str:
    """The device, as a string; CliError for a malformed name, a missing GPU or a bad index."""
    import torch

    from .embedder import resolve_device

    try:
        torch.device(name)
    except RuntimeError:
        raise CliError(f"invalid device {name!r}: expected cpu, cuda or cuda:N") from None
    try:
        return str(resolve_device(device=name))
    except (RuntimeError, ValueError) as e:  # no GPU, not that many, or a device type such as mps
        raise CliError(_describe(e)) from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP, handled like Ctrl-C: the job stops cleanly, completed pieces stay."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_the_job():
    def handler(signum, frame):
        raise _Terminated(signum)

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def cmd_embed(args) -> int:
    import torch

    from .corpus import EmbedderModel, parse_shard, prepare, run
    from .embedder import ElmoEmbedder
    from .ray import check_cli_arguments, run_job_on_ray

    check_cli_arguments(args)  # --ray's own rules first (stateless, no --device, no --resume)
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--batch-tokens", args.batch_tokens, 1),
                             ("--bucket-window", args.bucket_window, 1),
                             ("--piece-sentences", args.piece_sentences, 1)):
        if value is not None and value < low:
            raise CliError(f"{flag} must be at least {low}, got {value}")
    if args.use_sentence_keys and args.layout != "allennlp":
        raise CliError("--use-sentence-keys needs --layout allennlp "
                       "(the flat layout indexes sentences by number)")
    stateful = not args.stateless
    if stateful and args.shard:
        raise CliError("--shard needs --stateless: in stateful mode each sentence's numbers depend on "
                       "the state carried from every sentence before it, so a shard cannot start "
                       "in the middle")
    shard = parse_shard(args.shard) if args.shard else None
    # Everything that can be checked without the model is checked first.
    device = _device(args)
    progress = not args.no_progress
    source = sys.stdin.buffer if args.input_file == "-" else args.input_file
    job = prepare(source, args.output_file, output_format=args.output_format, batch_size=args.batch_size,
                  batch_tokens=args.batch_tokens, window=args.bucket_window, layout=args.layout,
                  dtype_out=args.dtype_out, pool=args.pool, forget_sentences=args.forget_sentences,
                  use_sentence_keys=args.use_sentence_keys, empty_lines=args.empty_lines, resume=args.resume,
                  shard=shard, piece_sentences=args.piece_sentences, progress=progress,
                  notice=lambda msg: print(f"{PROG}: {msg}", file=sys.stderr))
    try:
        model, options, weights = args.model, args.options, args.weights
        if model is None and (options is None) != (weights is None):
            model, options, weights = options or weights, None, None  # its partner is looked up beside it
        elif model is None and options is None:
            model = "original"
        start = time.perf_counter()
        with _signals_stop_the_job():
            try:
                if args.ray is not None:
                    result = run_job_on_ray(job, args, model, options, weights)
                    device = f"Ray: {args.workers} worker(s) x {args.gpus_per_worker:g} GPU"
                else:
                    embedder = ElmoEmbedder(options, weights, model=model, stateful=stateful,
                                            warm_start=args.warm_start, device=device,
                                            dtype=getattr(torch, DTYPES[args.dtype]), progress=progress)
                    result = run(job, EmbedderModel(embedder), batching="input" if stateful else "bucket")
            except _Terminated as e:
                _err(f"terminated by {signal.Signals(e.signum).name}; completed pieces (if any) are kept for "
                     "--resume")
                return 128 + e.signum
    finally:
        job.close()
    if progress:
        secs = time.perf_counter() - start
        mode = "stateful" if stateful else "stateless"
        print(f"{PROG}: wrote {result.sentences} sentences ({job.scan.tokens} tokens, {args.output_format}, "
              f"{args.layout}, {args.dtype_out}{', mean-pooled' if args.pool == 'mean' else ''}, {mode}"
              f"{', warm start' if args.warm_start else ''}, {device}, {args.dtype}) to {args.output_file} "
              f"in {secs:.1f} s ({result.tokens / max(secs, 1e-9):,.0f} tokens/s"
              f"{f', resumed at sentence {result.resumed_from}' if result.resumed_from else ''})",
              file=sys.stderr)
    return 0


def cmd_merge(args) -> int:
    from .corpus import EmbeddingsError, merge_into

    start = time.perf_counter()
    try:
        n = merge_into(args.output_file, args.shards)
    except EmbeddingsError as e:
        raise CliError(str(e)) from None
    print(f"{PROG}: merged {len(args.shards)} files ({n} sentences) into {args.output_file} in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------- info
def _extension_info() -> Dict[str, Any]:
    """The CUDA extension's state and build info (`_lstm_ext.extension_info`), JSON-able."""
    try:
        from ._lstm_ext import extension_info

        info = extension_info()
    except Exception as e:  # a broken installation: say so rather than fail `info`
        return {"available": False, "state": "failed", "detail": f"{type(e).__name__}: {e}"}
    return json.loads(json.dumps(info, default=str))


def collect_info(device: Optional[str] = None, dtype: str = "fp32", arch: str = "original",
                 backend: Optional[str] = None) -> Dict[str, Any]:
    """Everything `elmo-fast info` reports, as a JSON-able dict (backend: the choice to check the
    ops under, as `elmo_fast.ops.use_backend`; None: ELMO_FAST_BACKEND)."""
    import torch

    from . import __version__, _config
    from .ops import current_backend, use_backend

    info: Dict[str, Any] = {"elmo_fast": __version__, "python": platform.python_version(),
                            "torch": torch.__version__}
    try:
        import triton

        info["triton"] = getattr(triton, "__version__", "unknown")
    except Exception as e:
        info["triton"] = None
        info["triton_error"] = f"{type(e).__name__}: {e}"
    cuda: Dict[str, Any] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        cuda["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cuda["capability"] = ["%d.%d" % torch.cuda.get_device_capability(i)
                              for i in range(torch.cuda.device_count())]
    info["cuda"] = cuda
    info["env"] = _config.raw(("ELMO_FAST_BACKEND", "TRITON_INTERPRET"))
    with use_backend(backend):
        try:
            info["backend_override"], info["backend_source"] = current_backend()
        except ValueError as e:
            info["backend_override"] = None
            info["backend_override_error"] = str(e)
        info["op_check"] = {"device": str(device or _default_device()), "dtype": dtype, "arch": arch}
        info["ops"] = _check_ops(device, dtype, arch)
    info["cuda_extension"] = _extension_info()
    from .reference._cpu_gemm import cpu_kernels_status
    info["cpu_kernels"] = cpu_kernels_status()
    return info


def _check_ops(device: Optional[str], dtype: str, arch: str) -> Dict[str, Any]:
    """For every op: the backend a call with `arch`'s shapes gets here, and why the others don't."""
    import torch

    from .ops import OPS, BackendUnavailable
    from .synthetic import model_shapes

    shapes = model_shapes(arch)
    dev = torch.device(device or _default_device())
    tdtype = getattr(torch, DTYPES[dtype])
    ops: Dict[str, Any] = {}
    for name, op in OPS.items():
        entry: Dict[str, Any] = {"selected": None}
        try:
            inputs = op.example(shapes, dev, tdtype) if op.example else {}
            entry["backends"] = [{"name": b, "available": not why, "reasons": list(why)}
                                 for b, why in op.explain(**inputs)]
            entry["selected"] = op.select(**inputs).name
        except (BackendUnavailable, ValueError, RuntimeError) as e:
            entry["error"] = _describe(e)
        ops[name] = entry
    return ops


def format_info(info: Dict[str, Any]) -> str:
    lines = [f"elmo-fast {info['elmo_fast']}",
             f"python {info['python']}, torch {info['torch']}, triton "
             + (info["triton"] or f"not available ({info.get('triton_error')})")]
    cuda = info["cuda"]
    if cuda["available"]:
        devs = ", ".join(f"{n} (sm {c})" for n, c in zip(cuda["devices"], cuda["capability"]))
        lines.append(f"CUDA {cuda['torch_cuda']}: {devs}")
    else:
        lines.append("CUDA: not available"
                     + (f" (torch built with CUDA {cuda['torch_cuda']}, no device found)"
                        if cuda["torch_cuda"] else " (CPU-only torch build)"))
    env = info["env"]
    lines.append("ELMO_FAST_BACKEND=" + (env["ELMO_FAST_BACKEND"] or "(unset: auto)")
                 + "   TRITON_INTERPRET=" + (env["TRITON_INTERPRET"] or "(unset)"))
    if info.get("backend_override_error"):
        lines.append(f"  error: {info['backend_override_error']}")
    chk = info["op_check"]
    lines.append(f"ops ({chk['arch']} model shapes, {chk['dtype']}, on {chk['device']}):")
    for name, entry in info["ops"].items():
        lines.append(f"  {name:<12} -> {entry['selected'] or 'none'}")
        if entry.get("error"):
            lines.append(f"      error: {entry['error']}")
        for b in entry.get("backends", []):
            if b["name"] == entry["selected"]:
                continue
            why = "; ".join(b["reasons"]) if b["reasons"] else "could run, but a preferred backend was chosen"
            lines.append(f"      {b['name']}: {why}")
    ext = info["cuda_extension"]
    lines.append(f"CUDA LSTM extension: {ext.get('state', 'unknown')}"
                 + (f" ({ext['origin']})" if ext.get("origin") else ""))
    for k, v in (ext.get("build") or {}).items():
        lines.append(f"  {k}: {v}")
    for k in ("detail", "how"):
        if ext.get(k):
            lines.append(f"  {k}: {ext[k]}")
    lines.append(f"CPU kernels (the LSTM recurrence's GEMMs and cell update; else oneDNN, torch ops): "
                 f"{info['cpu_kernels']}")
    return "\n".join(lines)


def cmd_info(args) -> int:
    device = _check_device(args.device) if args.device else None
    info = collect_info(device, args.dtype, args.arch, getattr(args, "backend", None))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


# ------------------------------------------------------------------------------------------ models
def cmd_models(args) -> int:
    from .download import default_cache_dir, list_models

    rows = list_models()
    if args.json:
        print(json.dumps({"cache": default_cache_dir(), "models": rows}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"cache: {default_cache_dir()}")
    for r in rows:
        status = r["status"] + (f", {r['bytes'] / 2**20:.1f} MiB" if r["bytes"] else "")
        print(f"{r['name']:<{width}}  [{status}]  {r['description']}")
        if r["options_url"]:
            print(f"{'':<{width}}  {r['weights_url']}")
    return 0


# ------------------------------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    module = args.bench_module or _load_bench()
    return int(module.run(args) or 0)


# -------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 usage or input error)."""
    from .weights import WeightsError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        bench_module = None
        if argv[:1] == ["bench"]:
            bench_module = _load_bench()
        try:
            args = build_parser(bench_module).parse_args(argv)
        except SystemExit as e:  # argparse: --help, --version, or a usage error (already printed)
            return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
        return args.func(args)
    except (CliError, WeightsError) as e:
        _err(_describe(e))
    except BrokenPipeError:  # `elmo-fast info | head`: the reader left; say nothing more
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except (OSError, ValueError) as e:  # input problems, missing files, downloads, bad settings
        _err(_describe(e))
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except RuntimeError as e:
        import torch

        from .ops import BackendUnavailable

        if isinstance(e, torch.cuda.OutOfMemoryError):
            _err("out of GPU memory; try a smaller --batch-size or --dtype bf16")
            return 1
        if not isinstance(e, BackendUnavailable):
            raise
        _err(_describe(e))
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
