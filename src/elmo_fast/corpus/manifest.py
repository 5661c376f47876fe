"""Pieces and the manifest: what a run has completed, so an interrupted run can resume.

A run writing OUTPUT works in the folder `.OUTPUT.parts/` beside it (same filesystem, so the final
rename is atomic). It holds:
  lock                 flock'ed by the live run (released by the kernel when it dies, even on
                       SIGKILL), with its pid; a second run into the same OUTPUT is refused
  piece-00000.h5 ...   complete output files (layouts.py) for consecutive sentence ranges
  manifest.json        {"format": "elmo-fast-manifest", "version": 1,
                        "job": {input: {name, sha256, lines, sentences, tokens}, model_sha256,
                                options, mode, warm_start, compute_dtype, device_type,
                                batching: {mode, batch_size, batch_tokens, window}, empty_lines,
                                output: {layout, output_format, dtype_out, pool, ...},
                                range: [first, stop]},
                        "pieces": [{file, first, n, sha256, bytes}, ...]}
A piece is written under a temporary name, closed, checksummed, renamed, and only then listed in
the manifest (itself replaced atomically); a file that is not listed is never trusted. The last
piece of a run is listed with sha256 null (it is assembled at once, and hashing it would mean reading
it all back); a resumed run redoes such a piece.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

FORMAT = "elmo-fast-manifest"
VERSION = 1


class ResumeError(ValueError):
    """Leftovers of an earlier run that this run cannot (or was not told to) continue."""


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_identity(module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(list(module.state_dict().items())):
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Manifest:
    path: str
    job: Dict[str, Any]
    pieces: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str) -> "Manifest":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ResumeError(f"cannot read the manifest {path}: {e}") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ResumeError(f"{path} is not an elmo-fast manifest of version {VERSION}")
        return cls(path, data["job"], data["pieces"])

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "version": VERSION, "job": self.job, "pieces": self.pieces}, f,
                      indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @property
    def done(self) -> int:
        """Sentences completed (the next sentence to compute, relative to the job's range)."""
        return sum(p["n"] for p in self.pieces)


def job_difference(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[str]:
    """Why a manifest's job is not this one (None if it is)."""
    if old.get("input", {}).get("sha256") != new["input"]["sha256"]:
        o = old.get("input", {})
        return (f"they were made from another input ({o.get('name')}: {o.get('lines')} lines, sha256 "
                f"{str(o.get('sha256'))[:12]}...; this input: {new['input']['lines']} lines, sha256 "
                f"{new['input']['sha256'][:12]}...)")
    if old.get("model_sha256") != new["model_sha256"] or old.get("options") != new["options"]:
        return (f"they were made by another model (weights sha256 {str(old.get('model_sha256'))[:12]}..., "
                f"this model {new['model_sha256'][:12]}...)")
    diffs = [f"{k}: {_show(old.get(k))} then, {_show(new[k])} now" for k in sorted(new)
             if k not in ("input", "model_sha256", "options") and old.get(k) != new[k]]
    if diffs:
        return "they were made with other options that change the output (" + "; ".join(diffs) + ")"
    return None


def _show(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


class WorkDir:
    """`.OUTPUT.parts/` beside OUTPUT, locked while a run uses it."""

    def __init__(self, output: str):
        folder, base = os.path.split(os.path.abspath(output))
        self.output = output
        self.path = os.path.join(folder, f".{base}.parts")
        self.manifest_path = os.path.join(self.path, "manifest.json")
        self._lock = None

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def acquire(self, notice: Callable[[str], None]) -> None:
        """Creates / locks the folder; removes what a dead run left half-done in it."""
        os.makedirs(self.path, exist_ok=True)
        lock_path = os.path.join(self.path, "lock")
        f = open(lock_path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise ResumeError(f"another elmo-fast run (pid {pid}) is writing {self.output} right now "
                              f"(it holds {lock_path}); wait for it or choose another output") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f
        listed = set()
        if os.path.exists(self.manifest_path):
            with contextlib.suppress(ResumeError):
                listed = {p["file"] for p in Manifest.load(self.manifest_path).pieces}
        for n in sorted(os.listdir(self.path)):
            if n.endswith(".tmp") or (n.startswith("piece-") and n not in listed):
                os.unlink(os.path.join(self.path, n))
                notice(f"removed {os.path.join(self.path, n)}, left unfinished by an earlier run "
                       "that no longer runs")

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)

    def piece_path(self, k: int) -> str:
        return os.path.join(self.path, f"piece-{k:05d}.h5")
