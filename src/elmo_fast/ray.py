"""Ray Data adapter: embed a corpus on a pool of Ray actors, one process per GPU or CPU worker.

Optional extra: ``pip install 'elmo_fast[ray]'`` (Ray Data >= 2.51, where ``compute=`` with
``ray.data.ActorPoolStrategy`` replaced the deprecated ``concurrency=``). This module imports
without Ray; using it without Ray raises ImportError naming the extra.

  * `BatchEmbedder`: a callable class for ``Dataset.map_batches``. Each actor loads the model once
    (any name or path that `elmo_fast.download.resolve_model` accepts) and turns a batch of rows
    ``{text: [B] str, index: [B] int}`` into ``{index: [B] int64, tokens: [B] int64,
    embedding: [B] float32 arrays}``.
  * `embed_dataset(ds, ...)`: that map on a fixed-size actor pool whose resources are sized from
    what the cluster has; the result is keyed by the input's sentence index.
  * `run_job_on_ray(job, ...)`: ``elmo-fast embed ... --ray [ADDRESS] --workers N``: the corpus
    job (`elmo_fast.corpus`: reader, checks, layouts, pieces, manifest) with its model stage
    answered by the actors (`RayModel`).

Only stateless and warm-start outputs are computed here: their numbers depend on the sentence
alone, so they equal the single-process job's whatever the scheduling. Stateful mode is refused.

Faults: Ray Data's actor pools restart a dead actor (``max_restarts=-1``) and resubmit the task
it was running (``max_task_retries=-1``) by default; we rely on those defaults. Since every
sentence's output depends only on the sentence, a retried batch recomputes the same numbers.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["BatchEmbedder", "RayModel", "embed_dataset", "require_ray", "worker_cpus", "sentences_dataset",
           "ordered_embeddings", "run_job_on_ray", "RAY_INSTALL_HINT", "STATEFUL_REFUSED"]

RAY_INSTALL_HINT = "pip install 'elmo_fast[ray]'"
POOLS = (None, "mean")  # the corpus job's "none" is None here
STATEFUL_REFUSED = (
    "stateful mode cannot run on Ray: each sentence's numbers would depend on which sentences "
    "shared a worker and a batch row before it, which Ray's scheduling decides; use stateless mode "
    "(optionally with a warm start), whose output equals the single-process job's")
_EXIT_MARKER = "ray-worker-exit"


def require_ray():
    """The `ray` module with Ray Data, or ImportError saying how to install the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks pyarrow)
    except ImportError as e:
        raise ImportError(f"Ray Data is not installed ({e}); elmo_fast's Ray adapter needs it: "
                          f"{RAY_INSTALL_HINT}") from None
    return ray


# ------------------------------------------------------------------------------------------- actor
def _reduce(emb: np.ndarray, layers: str, pool: Optional[str]) -> np.ndarray:
    """One sentence's [L, T, D] -> the stored form: all [L, T, D], top / average [T, D]; with pool
    'mean' the mean over tokens ([L, D] or [D]; zeros for a sentence without tokens)."""
    if layers == "top":
        emb = emb[-1]
    elif layers == "average":
        emb = np.average(emb, axis=0)  # as embed_corpus does, so the numbers are the same bits
    if pool == "mean":
        tokens = emb.shape[-2]
        emb = emb.mean(axis=-2) if tokens else np.zeros(emb.shape[:-2] + emb.shape[-1:], np.float32)
    return np.ascontiguousarray(emb, dtype=np.float32)


class BatchEmbedder:
    """Callable class for ``Dataset.map_batches``: one model per actor, stateless batches.

    Constructor: model / options_file / weight_file as `ElmoEmbedder` takes them; layers 'all' |
    'top' | 'average'; pool None | 'mean'; warm_start; device ('cpu', 'cuda': inside a Ray actor
    'cuda' is the GPU Ray assigned); dtype 'fp32' | 'bf16'; batch_size (sentences per model call:
    a Ray batch is sorted by length and cut into model batches so they pad little); threads (torch
    CPU threads; default: the CPUs Ray assigned this actor, at least 1).

    __call__(batch): ``{text_column: [B] str, index_column: [B] int}`` ->
    ``{"index": [B] int64, "tokens": [B] int64, "embedding": per row float32 [L, T, D] ('all'),
    [T, D] ('top', 'average'), [L, D] or [D] (pool 'mean')}``, rows in the input's order.
    """

    def __init__(self, model: Optional[str] = None, options_file: Optional[str] = None,
                 weight_file: Optional[str] = None, *, layers: str = "all", pool: Optional[str] = None,
                 warm_start: bool = False, device: str = "cpu", dtype: str = "fp32", batch_size: int = 64,
                 threads: Optional[int] = None, text_column: str = "text", index_column: str = "index",
                 _exit_on_batch: Optional[Tuple[int, str]] = None):
        import torch

        from .embedder import ElmoEmbedder

        _check_choices(layers, pool, batch_size)
        if threads is None:
            threads = _assigned_cpu_threads()
        if threads:
            torch.set_num_threads(threads)
        self.layers, self.pool, self.batch_size = layers, pool, batch_size
        self.text_column, self.index_column = text_column, index_column
        self.embedder = ElmoEmbedder(options_file, weight_file, model=model, stateful=False,
                                     warm_start=warm_start, device=device, dtype=_torch_dtype(dtype),
                                     progress=False)
        self._exit_on_batch = _exit_on_batch
        self._calls = 0

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self._calls += 1
        if self._exit_on_batch is not None and self._calls == self._exit_on_batch[0]:
            _test_exit(self._exit_on_batch[1])
        for column in (self.text_column, self.index_column):
            if column not in batch:
                raise KeyError(f"the dataset has no column {column!r} (columns: {sorted(batch)}); pass "
                               "text_column= / index_column= to embed_dataset")
        texts = [str(t) for t in batch[self.text_column]]
        index = np.asarray(batch[self.index_column], dtype=np.int64)
        tokens = [t.split() for t in texts]
        order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))  # longest first, stable
        out: List[Optional[np.ndarray]] = [None] * len(tokens)
        for k in range(0, len(order), self.batch_size):
            rows = order[k:k + self.batch_size]
            for i, emb in zip(rows, self.embedder.embed_batch([tokens[i] for i in rows])):
                out[i] = _reduce(emb, self.layers, self.pool)
        if self.pool is not None:
            embedding = np.stack(out) if out else np.zeros((0, self.embedder.output_dim), np.float32)
        else:  # rows of different lengths: Ray stores them as a variable-shaped tensor column
            embedding = np.empty(len(out), dtype=object)
            embedding[:] = out
        return {"index": index, "tokens": np.array([len(t) for t in tokens], dtype=np.int64),
                "embedding": embedding}


def _assigned_cpu_threads() -> Optional[int]:
    """floor(CPUs Ray assigned this actor), at least 1; None outside a Ray worker."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker
        return None
    return max(1, int(cpus)) if cpus is not None else None


def _test_exit(folder: str) -> None:
    """The fault-test hook (ELMO_FAST_RAY_TEST_EXIT): the first worker to get here in a job records
    its pid in folder and ends its process abruptly; later ones (restarts included) carry on."""
    try:
        fd = os.open(os.path.join(folder, _EXIT_MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(1)


def _torch_dtype(name: str):
    import torch

    from .cli import DTYPES  # the command line's dtype names, one table

    if name not in DTYPES:
        raise ValueError(f"dtype must be fp32 or bf16, got {name!r}")
    return getattr(torch, DTYPES[name])


def _check_choices(layers: str, pool: Optional[str], batch_size: int) -> None:
    from .corpus import OUTPUT_FORMATS

    if layers not in OUTPUT_FORMATS:
        raise ValueError(f"layers must be one of {', '.join(OUTPUT_FORMATS)}, got {layers!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be None or 'mean', got {pool!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


# ------------------------------------------------------------------------------------- the dataset
def worker_cpus(cluster_cpus: float, largest_node_cpus: float, workers: int, gpu: bool) -> float:
    """CPUs to reserve for each of `workers` actors.

    Never the whole cluster: Ray Data's read and bookkeeping tasks need CPU too, and an actor pool
    that takes every CPU stalls forever (observed: 2 actors at 1 CPU on a 2-CPU cluster). So each
    actor gets an equal share with one share left over, at most half the largest node (so an
    actor always fits on a node beside other tasks), and at most 1 CPU for a GPU worker (the GPU
    does the work). Rounded down to 1/100 CPU.
    """
    share = min(cluster_cpus / (workers + 1), largest_node_cpus / 2 if largest_node_cpus >= 2 else 1.0)
    if gpu:
        share = min(share, 1.0)
    return math.floor(share * 100) / 100


def _cluster(ray) -> Tuple[float, float, float]:
    """(total CPUs, CPUs of the largest alive node, total GPUs) of the connected cluster."""
    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("CPU", 0.0) for n in nodes), default=total.get("CPU", 0.0))
    return total.get("CPU", 0.0), largest, total.get("GPU", 0.0)


def embed_dataset(ds, model: Optional[str] = None, *, options_file: Optional[str] = None,
                  weight_file: Optional[str] = None, layers: str = "all", pool: Optional[str] = None,
                  stateful: bool = False, warm_start: bool = False, dtype: str = "fp32", workers: int = 1,
                  gpus_per_worker: float = 0.0, cpus_per_worker: Optional[float] = None,
                  batch_size: int = 64, batches_per_call: int = 4, text_column: str = "text",
                  index_column: str = "index"):
    """Embeds the sentences of a Ray Dataset on a fixed pool of `workers` actors.

    ds: rows with a str column `text_column` (one whitespace-tokenised sentence) and an integer
    column `index_column` (the sentence's index, which keys the output). Returns a lazy Dataset of
    rows ``{"index": int64, "tokens": int64, "embedding": float32}`` (shapes: see BatchEmbedder),
    in no particular order; `ordered_embeddings` reads it back in index order.

    Each actor reserves `gpus_per_worker` GPUs (0: a CPU worker; fractions share a GPU) and
    `cpus_per_worker` CPUs (default: `worker_cpus` of the connected cluster). A Ray batch holds
    batch_size * batches_per_call sentences, sorted by length inside the actor. Stateful mode is
    refused (ValueError): its numbers would depend on Ray's scheduling.
    """
    if stateful:
        raise ValueError(STATEFUL_REFUSED)
    _check_choices(layers, pool, batch_size)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not gpus_per_worker >= 0:
        raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
    if not isinstance(batches_per_call, int) or batches_per_call < 1:
        raise ValueError(f"batches_per_call must be a positive integer, got {batches_per_call!r}")
    _torch_dtype(dtype)
    ray = require_ray()
    if not ray.is_initialized():
        ray.init()
    cluster_cpus, largest_node, cluster_gpus = _cluster(ray)
    if gpus_per_worker and workers * gpus_per_worker > cluster_gpus:
        raise ValueError(f"{workers} workers x {gpus_per_worker:g} GPUs need {workers * gpus_per_worker:g} "
                         f"GPUs but the Ray cluster has {cluster_gpus:g}; Ray would wait for them forever")
    if cpus_per_worker is None:
        cpus_per_worker = worker_cpus(cluster_cpus, largest_node, workers, gpu=gpus_per_worker > 0)
    elif not cpus_per_worker >= 0 or (cluster_cpus and workers * cpus_per_worker >= cluster_cpus):
        raise ValueError(f"{workers} workers x {cpus_per_worker:g} CPUs leave none of the cluster's "
                         f"{cluster_cpus:g} CPUs for Ray Data's other tasks; the job would stall")
    from . import _config

    kwargs = dict(model=model, options_file=options_file, weight_file=weight_file, layers=layers, pool=pool,
                  warm_start=warm_start, device="cuda" if gpus_per_worker else "cpu", dtype=dtype,
                  batch_size=batch_size, threads=max(1, int(cpus_per_worker)), text_column=text_column,
                  index_column=index_column, _exit_on_batch=_config.ray_test_exit())
    return ds.map_batches(BatchEmbedder, fn_constructor_kwargs=kwargs,
                          batch_size=batch_size * batches_per_call,
                          compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
                          num_gpus=gpus_per_worker or None, batch_format="numpy")


def sentences_dataset(sentences: Iterable, rows_per_block: int = 1024):
    """A Ray Dataset of ``{"index": int64, "text": str}`` rows, in blocks of rows_per_block (blocks
    are the unit Ray Data hands to workers). sentences: strings (indexed 0, 1, ...) or
    (index, text) pairs."""
    import pyarrow as pa

    ray = require_ray()
    blocks, index, text = [], [], []

    def flush():
        blocks.append(pa.table({"index": pa.array(index, type=pa.int64()),
                                "text": pa.array(text, pa.string())}))
        index.clear()
        text.clear()

    for k, item in enumerate(sentences):
        i, t = (k, item) if isinstance(item, str) else item
        index.append(int(i))
        text.append(t)
        if len(index) == rows_per_block:
            flush()
    if index or not blocks:
        flush()
    return ray.data.from_arrow(blocks)


def ordered_embeddings(embedded, indexes) -> Iterator[np.ndarray]:
    """The embeddings of an `embed_dataset` result in the order of `indexes` (increasing sentence
    indexes, or n for 0 .. n-1).

    Rows arrive in whatever order Ray finishes them; the ones ahead of the next index wait in a
    buffer (in practice a few batches: Ray Data runs blocks roughly in order). Raises RuntimeError
    for an index not asked for, an index seen twice, or one missing at the end.
    """
    indexes = (np.arange(indexes, dtype=np.int64) if isinstance(indexes, int)
               else np.asarray(indexes, np.int64))
    n = len(indexes)
    pending: Dict[int, np.ndarray] = {}
    seen = np.zeros(n, dtype=bool)
    nxt = 0
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        for i, emb in zip(batch["index"].tolist(), batch["embedding"]):
            pos = int(np.searchsorted(indexes, i))
            if pos == n or indexes[pos] != i:
                raise RuntimeError(f"Ray returned sentence index {i}, which was not sent")
            if seen[pos]:
                raise RuntimeError(f"Ray returned sentence {i} twice")
            seen[pos] = True
            pending[pos] = emb
        while nxt in pending:
            yield pending.pop(nxt)
            nxt += 1
    if nxt < n:
        missing = np.flatnonzero(~seen)
        raise RuntimeError(f"Ray returned no embedding for {len(missing)} sentence(s), the first being "
                           f"sentence {int(indexes[missing[0]])}")


# ------------------------------------------------------------------------------ elmo-fast embed --ray
def add_cli_arguments(parser) -> None:
    """The --ray options of `elmo-fast embed`."""
    g = parser.add_argument_group("ray (scale out; needs the [ray] extra)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="embed on a Ray cluster: ADDRESS as ray.init takes it (host:6379, ray://host:10001, "
                        "auto, local); without ADDRESS, RAY_ADDRESS or a cluster started on this machine, "
                        "else a new local one. Needs --stateless")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="actors embedding in parallel (with --ray; default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs each actor reserves (with --ray; default 0: CPU workers; "
                        "0.5 puts two on a GPU)")


def check_cli_arguments(args) -> None:
    """--ray's rules, checked before anything else: CliError for what cannot run on Ray."""
    from .cli import CliError

    if args.ray is None:
        if args.workers != 1 or args.gpus_per_worker:
            raise CliError("--workers and --gpus-per-worker need --ray")
        return
    try:
        require_ray()
    except ImportError as e:
        raise CliError(str(e)) from None
    if not args.stateless:
        raise CliError(f"--ray needs --stateless: {STATEFUL_REFUSED}")
    if args.device is not None or args.cuda_device is not None:
        raise CliError("--device / --cuda-device do not apply with --ray: each worker runs on the GPU(s) "
                       "Ray gives it (--gpus-per-worker G) or on the CPU (G = 0)")
    if args.resume:
        raise CliError("--resume does not work with --ray (the sentences already done are known only inside "
                       "the job); remove the earlier run's .OUTPUT.parts folder beside OUTPUT "
                       "and start again")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if not args.gpus_per_worker >= 0:
        raise CliError(f"--gpus-per-worker must be >= 0, got {args.gpus_per_worker}")


class RayModel:
    """The corpus job's model stage (`elmo_fast.corpus.run`'s model interface), answered by Ray.

    The job runs with batching="input", so its batches hold the sentences with tokens in sentence
    order; each call takes the next B results of `stream` (all layers, float32, from the actors) and
    lays them out as the engine would: activations [B, L, T, D] (zeros past each sentence), mask
    [B, T]. The job then selects layers, pools, converts and writes exactly as it does for the
    single-process engine. identity(): the single-process model's, with the workers' device kind.
    """

    stateful = False

    def __init__(self, stream: Iterator[np.ndarray], identity: Dict[str, Any], num_layers: int, dim: int):
        import torch

        self.stream, self._identity = stream, identity
        self.num_layers, self.dim = num_layers, dim
        self.device = torch.device("cpu")  # where the job's later stages get the activations

    def identity(self) -> Dict[str, Any]:
        return dict(self._identity)

    def __call__(self, ids):
        import torch

        B, T = ids.shape[0], ids.shape[1]  # batch_to_ids: [B, T, 50], no <S> / </S> (the BiLm adds them)
        lengths = (ids > 0).any(-1).sum(1)  # real tokens per row
        acts = torch.zeros(B, self.num_layers, T, self.dim)
        for r, n in enumerate(lengths.tolist()):
            emb = next(self.stream, None)
            if emb is None:
                raise RuntimeError("Ray returned fewer sentences than the job has")
            if emb.shape != (self.num_layers, n, self.dim):
                raise RuntimeError(f"a Ray result has shape {emb.shape} where its sentence needs "
                                   f"{(self.num_layers, n, self.dim)}")
            acts[r, :, :n] = torch.from_numpy(np.array(emb))
        return acts, torch.arange(T)[None, :] < lengths[:, None]


def _unwrap(exc: BaseException) -> BaseException:
    """The user's exception inside a Ray task error (RayTaskError(WeightsError) -> WeightsError)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


def _worker_error(exc: BaseException) -> str:
    """One line for a failed Ray job: the worker's own exception line ("KeyError: ...") when the
    remote traceback carries one (Ray Data re-raises user errors as UserCodeException without
    their cause), else Ray's first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    own = [ln for ln in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt): ", ln)
           and not ln.startswith("ray.")]
    return own[-1] if own else (lines[0] if lines else type(exc).__name__)


def run_job_on_ray(job, args, model: Optional[str], options: Optional[str], weights: Optional[str]):
    """`elmo-fast embed ... --ray`: a prepared corpus job (elmo_fast.corpus.prepare: the input and
    output already checked, with the single-process job's messages) embedded on a Ray actor pool,
    written by the corpus job's own writer (same layouts, pieces, manifest). Returns its Result."""
    from .cli import CliError
    from .corpus import EmbedderModel, run
    from .corpus.reader import sentences
    from .embedder import ElmoEmbedder

    ray = require_ray()
    # The model is loaded once here: a missing or malformed model gets the single-process message
    # before Ray starts, a registry model lands in this node's cache before its workers look for it,
    # and the job records the same model identity as a single-process run.
    base = EmbedderModel(ElmoEmbedder(options, weights, model=model, stateful=False,
                                      warm_start=args.warm_start,
                                      device="cpu", dtype=_torch_dtype(args.dtype), progress=job.progress))
    identity = dict(base.identity(), device_type="cuda" if args.gpus_per_worker else "cpu")
    num_layers, dim = base.num_layers, base.dim
    del base

    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray or None, logging_level=logging.WARNING, include_dashboard=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the job's bar is the one
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        per_call = 4
        sent: List[int] = []

        def with_tokens():  # sentences without tokens are in no batch of the job: no model work
            for k, _, text in sentences(job.source, job.empty_lines, job.first, job.stop):
                if text.split():
                    sent.append(k)
                    yield k, text

        ds = sentences_dataset(with_tokens(), rows_per_block=args.batch_size * per_call)
        indexes = np.asarray(sent, dtype=np.int64)
        try:
            embedded = embed_dataset(ds, model, options_file=options, weight_file=weights, layers="all",
                                     warm_start=args.warm_start, dtype=args.dtype, workers=args.workers,
                                     gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size,
                                     batches_per_call=per_call)
        except ValueError as e:
            raise CliError(str(e)) from None
        job.notice(f"embedding on Ray: {args.workers} worker(s), {args.gpus_per_worker:g} GPU(s) each")
        try:
            return run(job, RayModel(ordered_embeddings(embedded, indexes), identity, num_layers, dim),
                       batching="input")
        except ray.exceptions.RayError as e:
            inner = _unwrap(e)
            if isinstance(inner, ray.exceptions.RayError):  # Ray's own failure, or a worker's error
                raise CliError(f"the Ray job failed: {_worker_error(e)}") from None
            raise inner from None
    finally:
        if started:
            ray.shutdown()
