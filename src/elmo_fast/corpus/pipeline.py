"""The corpus job: a one-way pipeline with bounded queues (GUIDE section 9).

    reader -> batcher -> character ids          [feeder thread]
      -> model, select / pool / convert dtype   [main thread; CUDA: pinned buffers, non-blocking d2h]
      -> assemble windows -> layout -> pieces    [writer thread]

`prepare(...)` does everything that needs no model (argument checks, the first pass over the
input, output path checks, stale temporaries); `run(job, model)` then embeds. `embed_corpus` does
both. Any stage's error stops every stage: the feeder and the model stop at their next batch, the
in-progress piece is deleted, completed pieces stay for `resume=True`, and the error is raised in
the calling thread as it was raised. The output appears only when complete (see manifest.py).

Memory is bounded by the queues, never the corpus: the feeder holds one window of sentences
(tokens only) plus QUEUE batches of character ids; the model stage and the writer share at most
three window buffers of outputs in the stored dtype (`WindowBuffers`: each the largest window's
tokens x stored layers x D x itemsize); the model holds one batch, whose output tensors the token
budget bounds: batch_tokens x (n_layers + 1) x D x 4 bytes for the activations. On the CPU, unpooled,
in the allennlp layout or the flat one in float32 (`direct_batches`), there are no window buffers:
the writer takes each batch's output as the model returned it (converted to the stored dtype) and
writes from it: the allennlp layout holds at most QUEUE + 1 batches, the flat layout the window
being assembled plus the one being written (about two window buffers). So a model must not reuse
the tensors it returns (EmbedderModel returns fresh ones).
"""
from __future__ import annotations

import contextlib
import gc
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from .. import _atomic
from .._support import one_thread
from .batching import Window, block_windows, check_limits
from .diskio import describe_failure
from .layouts import OutputSpec, WindowOut, open_output, to_storage
from .manifest import Manifest, ResumeError, WorkDir, file_sha256, job_difference, model_identity
from .merge import merge_files
from .outpath import check_output_path
from .place import STORAGE_TORCH, as_numpy, place_batch
from .reader import Scan, Source, open_source, scan, sentence_blocks

QUEUE = 4  # batches in flight between stages
DEFAULT_WINDOW = 1024
DEFAULT_PIECE_SENTENCES = 100_000
DEFAULT_PIECE_SECONDS = 600.0
_POLL = 0.1


# ------------------------------------------------------------------------------------------ model
class EmbedderModel:
    """The model stage over an ElmoEmbedder: ids [B, T, 50] (batch_to_ids) -> activations [B, L, T, D]
    (float32, sentence boundaries removed), mask [B, T]; the computation of `ElmoEmbedder.embed_batch`."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.bilm = embedder.elmo_bilm
        self.device = embedder.device
        self.stateful = self.bilm.stateful
        self.num_layers = self.bilm.num_layers
        self.dim = self.bilm.get_output_dim()

    def __call__(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        from ..modules import remove_sentence_boundaries

        with torch.inference_mode():
            out = self.bilm(ids)
            layers = [remove_sentence_boundaries(a, out["mask"]) for a in out["activations"]]
            return torch.stack([a for a, _ in layers], 1).float(), layers[0][1]

    def identity(self) -> Dict[str, Any]:
        """What makes this model's numbers: weights, options, mode, dtype, device kind."""
        o = self.bilm.options
        return {"model_sha256": model_identity(self.bilm),
                "options": {k: (v if isinstance(v, (int, float, str, bool, list, type(None))) else str(v))
                            for k, v in sorted(vars(o).items())},
                "mode": "stateful" if self.stateful else "stateless",
                "warm_start": bool(self.bilm.warm_start),
                "compute_dtype": str(self.embedder.dtype).replace("torch.", ""),
                "device_type": self.device.type}


def select_layers(acts: torch.Tensor, output_format: str) -> torch.Tensor:
    """[B, L, T, D] -> [B, L_s, T, D]: all layers, the top one, or their average. The average is
    summed layer by layer, in order, then divided: the same float32 operations as np.average."""
    if output_format == "all":
        return acts
    if output_format == "top":
        return acts[:, -1:]
    total = acts[:, 0].clone()
    for k in range(1, acts.shape[1]):
        total += acts[:, k]
    return (total / acts.shape[1]).unsqueeze(1)


# ------------------------------------------------------------------------------------------- job
@dataclass
class Job:
    """A prepared corpus job (see `prepare`)."""

    source: Source
    scan: Scan
    output: str            # absolute path
    label: str             # the path as the user gave it, for messages
    spec: OutputSpec
    batching: Optional[str]
    batch_size: int
    batch_tokens: Optional[int]
    window: int
    empty_lines: str
    resume: bool
    shard: Optional[Tuple[int, int]]
    piece_sentences: int
    piece_seconds: float
    progress: bool
    notice: Callable[[str], None]
    first: int = 0         # the sentence range this job writes
    stop: int = 0

    def close(self) -> None:
        self.source.close()


@dataclass
class Result:
    """sentences: in the output; tokens / seconds: computed by this run (a resumed run counts only
    what it computed)."""

    sentences: int
    tokens: int
    seconds: float
    output: str
    resumed_from: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def parse_shard(text: str) -> Tuple[int, int]:
    """'I/N' (0 <= I < N) -> (I, N)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def shard_range(n: int, window: int, shard: Tuple[int, int]) -> Tuple[int, int]:
    """Sentences [first, stop) of shard i of n_shards: whole windows, as even as they can be."""
    i, k = shard
    nw = -(-n // window)
    a, b = i * nw // k, (i + 1) * nw // k
    return min(a * window, n), min(b * window, n)


@contextlib.contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """The objects that exist now left out of the garbage collector's passes until the block ends.

    Why: a process that imported torch holds ~170 k objects, and one full collection over them
    takes 0.08-0.12 s with the GIL held: every Python stage stops, and the 20 000-sentence job
    (about 1 s) met one in every run (bench/NOTES.md, issue 8, tenth session). Objects made during
    the job are still collected. Left alone where the caller froze objects itself (gc.unfreeze
    would undo that)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@_old_objects_frozen()
def prepare(input_file, output_file_path, *, output_format: str = "all", batch_size: int = 64,
            batch_tokens: Optional[int] = None, window: Optional[int] = None, batching: Optional[str] = None,
            layout: str = "allennlp", dtype_out: str = "float32", pool: str = "none",
            forget_sentences: bool = False, use_sentence_keys: bool = False, empty_lines: str = "error",
            resume: bool = False, shard: Optional[Tuple[int, int]] = None,
            piece_sentences: int = DEFAULT_PIECE_SENTENCES, piece_seconds: float = DEFAULT_PIECE_SECONDS,
            progress: bool = True, notice: Optional[Callable[[str], None]] = None) -> Job:
    """Everything that needs no model: arguments, the first pass over the input (InputError naming
    file and line), the output path, stale temporaries of dead runs. Writes nothing but removals."""
    spec = OutputSpec(layout=layout, output_format=output_format, dtype_out=dtype_out, pool=pool,
                      forget_sentences=forget_sentences, use_sentence_keys=use_sentence_keys)
    window = window or DEFAULT_WINDOW
    check_limits(batch_size, batch_tokens, window)
    if piece_sentences < 1:
        raise ValueError(f"piece_sentences must be positive, got {piece_sentences}")
    in_path = os.fsdecode(input_file) if isinstance(input_file, (str, bytes, os.PathLike)) else None
    label = os.fsdecode(output_file_path)
    source = open_source(input_file)
    try:
        found = scan(source, empty_lines, sentence_keys=use_sentence_keys, window=window)
        out = check_output_path(output_file_path, in_path)
    except BaseException:
        source.close()
        raise
    say = notice or _say
    _atomic.remove_stale_temporaries(out, say)
    job = Job(source, found, out, label, spec, batching, batch_size, batch_tokens, window, empty_lines,
              resume, shard, piece_sentences, piece_seconds, progress, say)
    job.first, job.stop = ((0, found.sentences) if shard is None
                           else shard_range(found.sentences, window, shard))
    return job


def _say(msg: str) -> None:
    print(f"elmo-fast: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------- pipeline
class _Stop(Exception):
    """Raised inside a stage when another stage failed (the first error is re-raised instead)."""


class _Pipeline:
    def __init__(self):
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self.lock = threading.Lock()

    def fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None and not isinstance(e, _Stop):
                self.error = e
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=_POLL)
                return
            except queue.Full:
                pass

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                pass


_END = object()
_WHOLE = -1  # in place of a batch number: every batch of the window (placed by the model stage)


def _feeder(p: _Pipeline, job: Job, start: int, mode: str, q: queue.Queue, pin: bool) -> None:
    """Reads, batches and converts to character ids, ahead of the model."""
    try:
        blocks = sentence_blocks(job.source, job.empty_lines, start=start, stop=job.stop)
        for w in block_windows(blocks, mode, job.batch_size, job.batch_tokens, job.window):
            if not w.batches:
                p.put(q, (w, None, None, None))
                continue
            for j, b in enumerate(w.batches):
                lens = w.lengths[b]
                ids = w.batch_ids(j)
                rows = None
                if pin:  # CUDA: (row, position) of every real token, in batch order, computed here so the
                    # device never waits for a mask to come back before the output can be gathered
                    rows = torch.from_numpy(np.stack([np.repeat(np.arange(len(b)), lens),
                                                      np.concatenate([np.arange(n) for n in lens.tolist()])]))
                    ids, rows = ids.pin_memory(), rows.pin_memory()
                p.put(q, (w, j, ids, rows))
        p.put(q, _END)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        p.fail(e)


class _Writer:
    """Assembles windows in input order, writes them to pieces, keeps the manifest."""

    def __init__(self, p: _Pipeline, job: Job, work: WorkDir, manifest: Manifest, bar,
                 first_piece_start: int, buffers: "WindowBuffers", prefill: bool = False):
        self.p, self.job, self.work, self.manifest, self.bar = p, job, work, manifest, bar
        self.prefill = prefill      # the model stage will take window buffers: make them at the start
        self.piece = None           # (H5Output, layout writer, tmp path, first sentence, opened at)
        self.pending: Dict[int, Any] = {}
        self.buffers = buffers
        self.helpers: list = []     # threads this one started
        self.next_start = first_piece_start
        self.sentences = 0
        self.tokens = 0
        self.t0 = time.perf_counter()

    def run(self, q: queue.Queue) -> None:
        try:
            if self.next_start < self.job.stop:
                # the window buffers made by a thread of their own (page faults: ~0.1 s for 3 x 50 MB,
                # which here delayed the first window's write), each handed to the model stage when
                # made, started first (the model stage waits for the first one), then the first piece
                # opened while the feeder prepares the first window
                if self.prefill and self.buffers.rows_hint:
                    t = threading.Thread(target=self._make_buffers, name="elmo-buffers", daemon=True)
                    self.helpers.append(t)   # joined by run(), like the stages
                    t.start()
                self._piece_writer(self.next_start)
            while True:
                item = self.p.get(q)
                if item is _END:
                    break
                self._take(*item)
            self._close_piece(last=True)
        except BaseException as e:  # noqa: BLE001
            self.p.fail(e)
            self.abort()

    def _make_buffers(self) -> None:
        try:
            self.buffers.make()
        except BaseException as e:  # noqa: BLE001 - e.g. MemoryError: stops the job like any stage's
            self.p.fail(e)

    def abort(self) -> None:
        if self.piece is not None:
            out, writer, tmp, _, _ = self.piece
            if hasattr(writer, "abort"):
                writer.abort()
            out.abort()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            self.piece = None

    def _take(self, w: Window, j: Optional[int], host, event, buf) -> None:
        """One batch of window w is done: its vectors are in `host` (CUDA: copied there without
        blocking; pooled: one row per sentence), placed into the window buffer `buf` here, or already
        in buf (j == _WHOLE: all of w's batches, placed by the model stage); the window is written
        once all are in. buf None (`direct_batches`): host is the batch's own output [B, L_s, T, D],
        handed to the layout writer now."""
        st = self.pending.setdefault(w.start, [0])
        if j == _WHOLE:  # the model stage placed all of w's batches in buf itself
            st[0] += len(w.batches) - 1
        elif buf is None:
            if host is not None:
                self._piece_writer(w.start).add_batch(w, j, as_numpy(host))
        elif host is not None:
            if event is not None:
                event.synchronize()
            place(buf, w, j, host, self.job.spec.pooled)
        st[0] += 1
        if st[0] < max(1, len(w.batches)):
            return
        del self.pending[w.start]
        if w.start != self.next_start:
            raise RuntimeError(f"internal error: window at sentence {w.start} "
                               f"completed before {self.next_start}")
        if buf is None:
            self._piece_writer(w.start).end_window(w)
            self._after_window(w.stop)
        else:   # the buffer back to the model stage once its rows are written (maybe after this returns)
            self._write(WindowOut(w.start, w.lines, w.text, w.lengths, as_numpy(buf)),
                        lambda: self.buffers.give(buf))
        self.next_start = w.stop
        n_tok = int(w.lengths.sum())
        self.sentences += len(w)
        self.tokens += n_tok
        if self.bar is not None:
            el = max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / el:,.0f} tok/s", refresh=False)
            self.bar.update(len(w))

    def _piece_writer(self, start: int):
        """The layout writer of the piece in progress (opened at sentence `start` if none is)."""
        if self.piece is None:
            k = len(self.manifest.pieces)
            tmp = _atomic.temporary_name(self.work.piece_path(k))
            job = self.job
            stop = min(start + job.piece_sentences, job.stop)   # the piece holds at least these
            expect = stop - start if job.spec.pooled else job.scan.tokens_within(start, stop)
            out, writer = open_output(tmp, job.label, job.spec, start, expect)
            self.piece = (out, writer, tmp, start, time.monotonic())
        return self.piece[1]

    def _write(self, wo: WindowOut, release) -> None:
        self._piece_writer(wo.start).add(wo, release)
        self._after_window(wo.start + len(wo.lengths))

    def _after_window(self, stop: int) -> None:
        """A window ending before sentence `stop` is in the piece: closes it when full, unless that
        window was the job's last (then it is closed as the last piece: no checksum to compute)."""
        out, writer, _, _, opened = self.piece
        out.check()
        if stop >= self.job.stop:
            return
        if writer.n >= self.job.piece_sentences or time.monotonic() - opened >= self.job.piece_seconds:
            self._close_piece()

    def _close_piece(self, last: bool = False) -> None:
        """Closes the piece in progress and records it in the manifest. The last piece of a run gets
        no checksum: it is assembled at once, and reading it back to hash it would cost about as much
        as writing it; should the run die before the output is complete, --resume redoes that piece."""
        if self.piece is None:
            return
        out, writer, tmp, first, _ = self.piece
        try:
            writer.finish()
            out.check()
            out.close()
            k = len(self.manifest.pieces)
            final = self.work.piece_path(k)
            digest = None if last else file_sha256(tmp)
            os.replace(tmp, final)
            self.manifest.pieces.append({"file": os.path.basename(final), "first": first, "n": writer.n,
                                         "sha256": digest, "bytes": os.path.getsize(final)})
            self.manifest.save()
        except OSError as e:
            raise describe_failure(e, self.job.label) from None
        self.piece = None


def place(buf: torch.Tensor, w: Window, j: int, out: torch.Tensor, pooled: bool) -> None:
    """Copies batch j's vectors (out: [L_s, tokens or rows, D], batch order) to their places in the
    window buffer (buf: [L_s, window tokens or sentences, D], input order)."""
    r = 0
    for pos in w.batches[j]:
        if pooled:
            buf[:, pos] = out[:, r]
            r += 1
        else:
            a, n = int(w.offsets[pos]), int(w.lengths[pos])
            buf[:, a:a + n] = out[:, r:r + n]
            r += n


class WindowBuffers:
    """At most `count` window buffers ([L_s, rows, D] in the stored dtype), reused: the job's output
    memory is count x the largest window, whatever the corpus size. The model stage takes one per
    window, waiting while all are with the writer; each comes back once its rows are written (from
    the flat layout's writes-behind thread, the writer meanwhile on the next window; the allennlp
    layout's writer, when its writes are done). Two suffice to keep both stages busy (one filled
    while one is written); a third absorbs jitter.

    `rows_hint`: the most rows a window will need (the first pass counts them). All `count` buffers
    are made at the job's start (`make`: by the writer, or at the first `take`), at that size, and
    zeroed, so that the job holds its steady-state memory from its start (a short job peaks where a
    long one does); a window that needs more replaces a buffer with a larger one."""

    def __init__(self, p: _Pipeline, spec: OutputSpec, count: int = 3, rows_hint: int = 0):
        self.p, self.spec, self.count, self.rows_hint = p, spec, count, rows_hint
        self.free: queue.Queue = queue.Queue()
        self.made = 0
        self.lock = threading.Lock()

    def make(self, rows: int = 0) -> None:
        """Makes all the buffers (once; later calls return at once), each for max(rows, rows_hint)
        rows: at full size and written (zeros), so that the job's steady-state memory is taken at its
        start, whatever the corpus length, and a machine short of it fails there. The writer calls
        this in a thread of its own as the job starts (page faults: ~0.1 s for 3 x 50 MB); `take`
        otherwise."""
        with self.lock:
            if self.made:
                return
            self.made = self.count
        size = len(self.spec.stored) * self.spec.dim * max(rows, self.rows_hint)
        for _ in range(self.count):   # each free as soon as it is made: the model stage takes the first
            if self.p.stop.is_set():  # the job is over (a short one may need only the first)
                return
            self.free.put(torch.zeros(size, dtype=STORAGE_TORCH[self.spec.dtype_out]))

    def take(self, w: Window) -> torch.Tensor:
        spec = self.spec
        rows = len(w) if spec.pooled else int(w.offsets[-1])
        need = len(spec.stored) * spec.dim * rows
        self.make(rows)
        flat = self.p.get(self.free)
        if flat.numel() < need:   # a window larger than the hint: a larger buffer takes its place
            flat = torch.empty(need, dtype=STORAGE_TORCH[spec.dtype_out])
        buf = flat[:need].view(len(spec.stored), rows, spec.dim)
        if spec.pooled and not w.lengths.all():  # sentences without tokens: zero vectors
            buf[:, torch.from_numpy(np.flatnonzero(w.lengths == 0))] = 0
        return buf

    def give(self, buf: torch.Tensor) -> None:
        self.free.put(buf._base if buf._base is not None else buf)


def _model_stage(p: _Pipeline, job: Job, model, q_in: queue.Queue, q_out: queue.Queue,
                 buffers: WindowBuffers) -> None:
    spec = job.spec
    dev = model.device
    cuda = dev.type == "cuda"
    direct = direct_batches(spec, dev)
    current, buf, staging = None, None, None
    while True:
        item = p.get(q_in)
        if item is _END:
            p.put(q_out, _END)
            return
        w, j, ids, rows = item
        if w is not current:
            current, buf = w, (None if direct else buffers.take(w))
        if j is None:
            p.put(q_out, (w, None, None, None, buf))
            continue
        acts, mask = model(ids.to(dev, non_blocking=cuda))
        sel = select_layers(acts, spec.output_format)                       # [B, L_s, T, D]
        if spec.pooled:
            m = mask.to(sel.dtype)
            out = ((sel * m[:, None, :, None]).sum(2) / m.sum(1).clamp_min(1)[:, None, None]).transpose(0, 1)
        elif cuda:  # one gather of the real tokens on the device: [L_s, tokens, D]
            rows = rows.to(dev, non_blocking=True)
            out = sel.transpose(0, 1)[:, rows[0], rows[1]]
        elif direct:  # the batch's own output goes to the writer (the model does not reuse it),
            # converted in one op for the batch (per sentence, torch's dispatch cost more than the
            # conversion), on one thread: on the pool, OpenMP's spinning workers would take the other
            # stages' core
            if spec.dtype_out != "float32":
                with one_thread(dev):
                    sel = to_storage(sel, spec.dtype_out)
            p.put(q_out, (w, j, sel, None, None))
            continue
        else:  # CPU, flat, converted: each sentence's rows converted straight into their place in the
            # window buffer (place.py: our kernel, one pass without the GIL; else one torch conversion
            # into a staging tensor kept from batch to batch, then numpy copies)
            b = np.asarray(w.batches[j], dtype=np.int64)
            with one_thread(dev):
                staging = place_batch(buf, sel, w.lengths[b], w.offsets[b], staging)
            if j == len(w.batches) - 1:  # one message per window: per batch, the bounded queue would
                p.put(q_out, (w, _WHOLE, None, None, buf))  # stall this stage while the writer writes
            continue
        out = to_storage(out, spec.dtype_out)
        event = None
        if cuda:  # pinned staging buffer, copied without blocking; the writer waits on the event
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = out
        if host.dtype == torch.int16:
            host = host.view(torch.bfloat16)
        p.put(q_out, (w, j, host, event, buf))


def direct_batches(spec: OutputSpec, device: torch.device) -> bool:
    """Whether the writer takes each batch's output as the model returned it (converted to the stored
    dtype in one op), with no window buffer: unpooled, on the CPU, in the allennlp layout (each
    sentence a dataset of its own) or the flat one in float32 (each chunk of rows gathered in input
    order from the window's batch outputs, h5flat.py). A converted flat output goes through window
    buffers instead: they are made once, at the job's start, so its memory does not depend on how
    each batch's conversion is allocated, and gathering from converted batches was no faster. CUDA
    outputs are gathered on the device and copied to pinned window buffers; pooled ones are a row per
    sentence, placed into a window buffer (tiny)."""
    return (not spec.pooled and device.type != "cuda"
            and (spec.layout == "allennlp" or spec.dtype_out == "float32"))


def _job_record(job: Job, model, mode: str) -> Dict[str, Any]:
    s = job.scan
    rec = {"input": {"name": s.name, "sha256": s.sha256, "lines": s.lines, "sentences": s.sentences,
                     "tokens": s.tokens}}
    rec.update(model.identity())
    rec.update({"batching": {"mode": mode, "batch_size": job.batch_size, "batch_tokens": job.batch_tokens,
                             "window": job.window},
                "empty_lines": job.empty_lines, "output": job.spec.settings(),
                "range": [job.first, job.stop]})
    return rec


def _start_manifest(job: Job, work: WorkDir, record: Dict[str, Any], stateful: bool) -> Manifest:
    """The manifest to continue (resume) or a fresh one; refuses leftovers it must not reuse."""
    old = Manifest.load(work.manifest_path) if os.path.exists(work.manifest_path) else None
    if old is not None and old.pieces:
        where = (f"{len(old.pieces)} completed piece(s) (sentences {record['range'][0]}-"
                 f"{record['range'][0] + old.done - 1}) of an earlier run in {work.path}")
        if not job.resume:
            if stateful:
                raise ResumeError(f"found {where}; a stateful run cannot be resumed (the carried LSTM "
                                  "state is not kept with the pieces): remove that folder to start again")
            raise ResumeError(f"found {where}; pass --resume (resume=True) to continue it, or remove "
                              "that folder to start again")
        if stateful:
            raise ResumeError(f"cannot resume: found {where}, but the run is stateful: its numbers depend on "
                              "the LSTM state carried from every earlier batch, which pieces do not keep; "
                              "remove that folder to start again, or use --stateless")
        why = job_difference(old.job, record)
        if why:
            raise ResumeError(f"cannot resume from {where}: {why}; remove that folder to start again")
        for piece in old.pieces:
            path = os.path.join(work.path, piece["file"])
            if piece["sha256"] is None or not os.path.exists(path) or file_sha256(path) != piece["sha256"]:
                k = old.pieces.index(piece)
                why = ("was not checksummed (the run stopped while assembling the output)"
                       if piece["sha256"] is None else "is missing or damaged (checksum)")
                job.notice(f"piece {piece['file']} {why}; redoing from sentence {piece['first']}")
                for later in old.pieces[k:]:
                    try:
                        os.unlink(os.path.join(work.path, later["file"]))
                    except FileNotFoundError:
                        pass
                old.pieces = old.pieces[:k]
                break
        old.job = record
        old.save()
        return old
    m = Manifest(work.manifest_path, record)
    m.save()
    return m


@_old_objects_frozen()
def run(job: Job, model, *, batching: Optional[str] = None) -> Result:
    """Embeds a prepared job with `model` (EmbedderModel or the same interface)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    mode = batching or job.batching or ("input" if model.stateful else "bucket")
    job.spec.num_layers, job.spec.dim = model.num_layers, model.dim
    if model.stateful and job.shard is not None:
        raise ResumeError("--shard cannot be used in stateful mode: each sentence's numbers depend on "
                          "the state carried from every sentence before it, so a shard cannot start in "
                          "the middle; use --stateless (optionally with --warm-start)")
    record = _job_record(job, model, mode)
    job.spec.attrs = {k: record[k]
                      for k in ("model_sha256", "options", "mode", "warm_start", "compute_dtype")}
    if job.shard is not None:
        job.spec.attrs["shard"] = f"{job.shard[0]}/{job.shard[1]}"
    work = WorkDir(job.output)
    work.acquire(job.notice)
    completed = False
    try:
        manifest = _start_manifest(job, work, record, model.stateful)
        start = job.first + manifest.done
        resumed_from = manifest.done
        if manifest.done:
            job.notice(f"resuming {job.label} at sentence {start} ({manifest.done} done in "
                       f"{len(manifest.pieces)} piece(s))")
        total = job.stop - job.first
        bar = tqdm(total=total, initial=manifest.done, unit="sent", desc="elmo", disable=not job.progress,
                   dynamic_ncols=True, smoothing=0.1) if job.progress else None
        p = _Pipeline()
        q_ids: queue.Queue = queue.Queue(QUEUE)
        q_out: queue.Queue = queue.Queue(QUEUE)
        # bucket mode: windows of job.window sentences, the largest counted by the first pass;
        # input mode: a window is one batch (the token budget bounds it), buffers grow to the largest
        hint = (job.window if job.spec.pooled else job.scan.window_tokens) if mode == "bucket" else 0
        writer = _Writer(p, job, work, manifest, bar, start, WindowBuffers(p, job.spec, rows_hint=hint),
                         prefill=not direct_batches(job.spec, model.device))
        # the writer started first: it starts the window buffers' making, which the first window waits for
        threads = [threading.Thread(target=writer.run, name="elmo-writer", daemon=True, args=(q_out,)),
                   threading.Thread(target=_feeder, name="elmo-feeder", daemon=True,
                                    args=(p, job, start, mode, q_ids, model.device.type == "cuda"))]
        for t in threads:
            t.start()
        try:
            _model_stage(p, job, model, q_ids, q_out, writer.buffers)
            threads[0].join()
        except BaseException as e:  # noqa: BLE001 - the model's error, or an interrupt
            p.fail(e)
        finally:
            p.stop.set()
            interrupted = None
            # no thread of the job outlives it: a daemon thread still inside native code (a buffer being
            # zeroed) when the interpreter exits aborts the process ("terminate called without an
            # active exception"); the writer's helpers are listed once the writer is joined
            for t in chain(threads, writer.helpers):
                while t.is_alive():
                    try:
                        t.join(_POLL)
                    except KeyboardInterrupt as e:  # a second signal: still wait for the stages to stop
                        interrupted = interrupted or e
                        p.fail(e)
            if bar is not None:
                bar.close()
            if interrupted is not None and p.error is None:
                p.error = interrupted
        if p.error is not None:
            raise p.error
        _assemble(job, work, manifest)
        completed = True
    finally:
        if completed or not _has_pieces(work):
            work.remove()
        else:
            work.release()
    return Result(job.stop - job.first, writer.tokens, time.perf_counter() - t0, job.output,
                  resumed_from=resumed_from)


def _has_pieces(work: WorkDir) -> bool:
    try:
        return bool(Manifest.load(work.manifest_path).pieces)
    except (ResumeError, OSError):
        return False


def _assemble(job: Job, work: WorkDir, manifest: Manifest) -> None:
    """The pieces -> the output, atomically (one piece: renamed; several: merged)."""
    paths = [os.path.join(work.path, pc["file"]) for pc in manifest.pieces]
    try:
        if len(paths) == 1:
            _atomic.finish(paths[0], job.output)
        else:
            merge_files(paths, job.output, label=job.label)
    except OSError as e:
        raise describe_failure(e, job.label) from None


def embed_corpus(embedder, sentences_or_file, output_file_path, output_format: str = "all",
                 batch_size: int = 64, forget_sentences: bool = False, use_sentence_keys: bool = False,
                 progress: bool = True, by_length: Optional[bool] = None, *, batching: Optional[str] = None,
                 **options) -> Result:
    """Embeds a corpus into an hdf5 file: prepare + run (see the module doc and layouts.py).

    embedder: an ElmoEmbedder (or a model with EmbedderModel's interface). sentences_or_file: a path
    (.gz too), an open file, or sentence strings (a list, or any iterable: it is streamed).
    batching: "input" (allennlp's input-order batches; what a stateful model needs to reproduce
    allennlp) or "bucket" (length-bucketed inside windows; stateless / warm-start). None takes the
    model's declared mode (EmbedderModel.stateful). by_length: the older spelling (True = bucket).
    options: batch_tokens, window, layout, dtype_out, pool, empty_lines, resume, shard,
    piece_sentences, piece_seconds, notice (see `prepare`).
    """
    if by_length is not None and batching is None:
        batching = "bucket" if by_length else "input"
    model = embedder if hasattr(embedder, "identity") else EmbedderModel(embedder)
    job = prepare(sentences_or_file, output_file_path, output_format=output_format, batch_size=batch_size,
                  forget_sentences=forget_sentences, use_sentence_keys=use_sentence_keys, progress=progress,
                  batching=batching, **options)
    try:
        return run(job, model)
    finally:
        job.close()
