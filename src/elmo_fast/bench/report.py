"""What every benchmark record carries and how it is written: the environment (machine, versions,
commit, command), paths as they may appear in a record (relative to the repository, never a
machine's absolute path), and atomic writes so a record on disk is always whole."""
from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional

import torch

from .._atomic import atomic_path


def _run(cmd: List[str], cwd: Optional[str] = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # no git, not a checkout, a hung command: the record says 'unknown'
        return ""


def repo_root() -> Optional[pathlib.Path]:
    """The git checkout the benchmark runs in: the working directory's, else the package's (an
    editable install); None for an installed wheel run outside any checkout."""
    for d in (pathlib.Path.cwd(), pathlib.Path(__file__).resolve().parent):
        top = _run(["git", "rev-parse", "--show-toplevel"], str(d))
        if top:
            return pathlib.Path(top)
    return None


def display_path(path: Any) -> str:
    """A path as a record stores it: relative to the repository when inside it or beside it (the
    shared/ folder next to a checkout is '../shared/...'), '<bench cache>/...' inside the bench's
    model cache, else the file's name alone."""
    from .inputs import cache_root

    paths = [pathlib.Path(os.path.abspath(path)), pathlib.Path(path).resolve()]  # a link's path, its target
    root = repo_root()
    roots = (root, root.resolve()) if root else ()
    pairs = [(base, up) for r in roots for base, up in ((r, ""), (r.parent, ".."))]
    for p in paths:
        for base, up in pairs:
            try:
                return str(pathlib.Path(up) / p.relative_to(base)) if up else str(p.relative_to(base))
            except ValueError:
                continue
    cache = cache_root()
    for p in paths:
        for c in (pathlib.Path(os.path.abspath(cache)), cache.resolve()):
            try:
                return str(pathlib.Path("<bench cache>") / p.relative_to(c))
            except ValueError:
                continue
    return paths[0].name


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _argv() -> List[str]:
    """sys.argv with the script's path as a record stores paths (display_path)."""
    argv = list(sys.argv)
    if argv and os.path.isfile(argv[0]):
        argv[0] = display_path(argv[0])
    return argv


def environment(device: torch.device) -> Dict[str, Any]:
    """Machine, versions, commit, date and command line of this run."""
    root = repo_root()
    cwd = str(root) if root else None
    env: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in _argv()),
        "commit": (_run(["git", "rev-parse", "HEAD"], cwd) if cwd else "") or "unknown",
        "dirty": bool(cwd and _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "hostname": platform.node(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
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
    from ..reference._cpu_gemm import cpu_kernels_status
    env["cpu_kernels"] = cpu_kernels_status()   # the recurrence's CPU GEMM: our kernel, or oneDNN
    try:
        from importlib import metadata
        env["elmo_fast"] = metadata.version("elmo_fast")
    except Exception:
        env["elmo_fast"] = "unknown"
    return env


def device_tag(env: Dict[str, Any]) -> str:
    """A file-name-safe name of the device found ('NVIDIA-H200', 'cpu'), for record folders."""
    name = env.get("gpu") or "cpu"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-") or "cpu"


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (the old file, if any, stays whole until the new one is)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path: str, record: Dict[str, Any]) -> None:
    write_text(path, json.dumps(record, indent=1, default=str) + "\n")
