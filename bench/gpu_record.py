"""The record of a bench/gpu_all.sh run: record.json (for tools) and record.md (for people) in $OUT.

    python bench/gpu_record.py --env PATH     capture the environment once (imports torch / triton)
    python bench/gpu_record.py                (re)write the record from what the run has left so far

gpu_all.sh calls the second form after every stage and on EXIT / TERM, so it imports nothing but
the standard library (well under a second) and reads only files: the stage table, env.json,
info.json, the junit XML of the test stages (or, for a stage cut before pytest wrote it, the
PASSED / FAILED lines of its -v log) and the benchmarks' JSON records. Both files are written
atomically. Settings come from gpu_all.sh: GPU_ALL_LOGS, GPU_ALL_OUT, GPU_ALL_T0, GPU_ALL_DRY_RUN.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ORDER = ["env", "wheels", "install", "install-nocuda", "info", "test-cuda", "test-rest", "bench-elmo",
         "bench-lstm", "bench-char-cnn"]
RESULT = re.compile(r"^(\S+::\S+(?: \S+)*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # a missing tool, a hung command: the record says None
        return ""


def capture_env(path: str) -> None:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": sh("git rev-parse HEAD") or None,
           "dirty": bool(sh("git status --porcelain --untracked-files=no")),
           "python": platform.python_version(), "hostname": platform.node(),
           "nvcc": sh("nvcc --version | tail -n 2 | head -n 1") or None}
    gpu = sh("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader")
    parts = gpu.split("\n")[0].split(", ") if gpu else []
    env["gpu"], env["driver"], env["gpu_memory"] = (parts + [None] * 3)[:3]
    try:
        import torch
        env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env.update(torch_gpu=p.name, sms=p.multi_processor_count, capability=f"{p.major}.{p.minor}")
    except Exception as exc:
        env["torch"] = f"not importable: {type(exc).__name__}: {exc}"
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as exc:
        env["triton"] = f"not importable: {type(exc).__name__}: {exc}"
    print(json.dumps(env, indent=1))
    write(path, json.dumps(env, indent=1))


def write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a record half-written by a killed benchmark cannot happen (atomic), but say so
        return {"error": f"unreadable: {type(exc).__name__}: {exc}"}


def stages(logs: str):
    rows = []
    with open(os.path.join(logs, "stages.tsv")) as f:
        for line in f:
            name, status, rc, sec, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
            rows.append({"stage": name, "status": status, "rc": rc, "seconds": int(sec or 0), "note": note})
    return rows


def tests(logs: str, key: str):
    """Counts and failures of one test stage: from its junit XML, else from its -v log."""
    junit = os.path.join(logs, f"junit-{key}.xml")
    if os.path.exists(junit):
        try:
            root = ET.parse(junit).getroot()
            suites = [root] if root.tag == "testsuite" else list(root)
            keys = ("tests", "failures", "errors", "skipped")
            agg = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
            agg["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites
                                   for c in s.iter("testcase")
                                   if c.find("failure") is not None or c.find("error") is not None][:60]
            agg["source"] = "junit"
            return agg
        except Exception as exc:
            junit_note = f"junit unreadable ({type(exc).__name__}: {exc}); "
    else:
        junit_note = ""
    log = os.path.join(logs, f"test-{key}.log")
    if not os.path.exists(log):
        return None
    seen = {}
    with open(log, errors="replace") as f:
        for line in f:
            m = RESULT.match(line.strip())
            if m:
                seen[m.group(1)] = m.group(2)
    vals = list(seen.values())
    last = ""
    with open(log, errors="replace") as f:
        for line in f:
            if "::" in line and line.strip():
                last = line.strip()
    return {"tests": len(vals), "failures": vals.count("FAILED"), "errors": vals.count("ERROR"),
            "skipped": vals.count("SKIPPED"),
            "failed_tests": [k for k, v in seen.items() if v in ("FAILED", "ERROR")],
            "source": junit_note + "the -v log (no junit: the stage was cut or crashed)",
            "last_test_line": last[:300]}


def main() -> int:
    if sys.argv[1:2] == ["--env"]:
        capture_env(sys.argv[2])
        return 0
    logs, out = os.environ["GPU_ALL_LOGS"], os.environ["GPU_ALL_OUT"]
    dry = os.environ.get("GPU_ALL_DRY_RUN") == "1"
    env = load_json(os.path.join(logs, "env.json")) or {}
    rows = stages(logs)
    notes = [n for n in open(os.path.join(logs, "notes.txt")).read().splitlines() if n] \
        if os.path.exists(os.path.join(logs, "notes.txt")) else []
    ext = os.path.join(logs, "extension.txt")
    rec = {
        "kind": "gpu_all", "dry_run": dry,
        "command": "bash bench/gpu_all.sh" + (" --dry-run" if dry else ""),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": int(time.time()) - int(os.environ.get("GPU_ALL_T0", time.time())),
        "total_s": int(os.environ.get("GPU_ALL_TOTAL_S", 0) or 0),
        "environment": env, "stages": rows, "notes": notes,
        "extension": open(ext).read().strip().removeprefix("extension: ") if os.path.exists(ext) else None,
        "extension_disabled": os.environ.get("GPU_ALL_EXTENSION_DISABLED") == "1",
        "info": load_json(os.path.join(logs, "info.json")),
        "tests": {k: t for k in ("cuda", "rest") if (t := tests(logs, k)) is not None},
        "benchmarks": {},
    }
    ran = {r["stage"] for r in rows}
    rec["not_run"] = [s for s in ORDER if s not in ran and s != "install-nocuda"]
    for name in ("elmo_bench", "bench_lstm", "bench_char_cnn"):
        b = load_json(os.path.join(out, f"{name}.json"))
        if b is not None:
            rec["benchmarks"][name] = b if name == "elmo_bench" else {
                "file": f"{name}.json", "complete": b.get("complete"),
                "measurements": len(b.get("records", b.get("runs", []))), "failed": b.get("failed", [])}
    # no machine-specific paths in a record: the checkout's own become relative to it
    text = json.dumps(rec, indent=1, default=str).replace(os.getcwd().rstrip("/") + "/", "")
    rec = json.loads(text)
    write(os.path.join(out, "record.json"), text + "\n")
    md = to_markdown(rec)
    write(os.path.join(out, "record.md"), md)
    print(md)
    return 0


def to_markdown(rec) -> str:
    env = rec["environment"]
    dry = " (DRY RUN on the CPU: plumbing only)" if rec["dry_run"] else ""
    L = [f"# gpu_all: {env.get('gpu') or 'no GPU'}{dry}",
         "",
         f"- written {rec['written']}; wall {rec['wall_s']} s of {rec['total_s']} s; "
         f"commit `{env.get('commit')}`"
         f"{' (uncommitted changes)' if env.get('dirty') else ''}; command `{rec['command']}`",
         f"- GPU: {env.get('gpu')} ({env.get('gpu_memory')}), driver {env.get('driver')}, "
         f"nvcc {env.get('nvcc')}",
         f"- torch {env.get('torch')} (CUDA {env.get('cuda')}), triton {env.get('triton')}, "
         f"Python {env.get('python')}",
         f"- CUDA extension: {rec['extension']}"
         + (" -- DISABLED after test-cuda failed" if rec["extension_disabled"] else "")]
    if rec["not_run"]:
        L.append(f"- not run (the run ended first): {', '.join(rec['not_run'])}")
    L += [f"- note: {n}" for n in rec["notes"]]
    L += ["", "## Stages", "", "| stage | status | rc | seconds | note |", "|---|---|---|---|---|"]
    L += [f"| {s['stage']} | {s['status']} | {s['rc']} | {s['seconds']} | {s['note']} |"
          for s in rec["stages"]]
    L += ["", "## Tests", "", "| stage | tests | failures | errors | skipped | from |",
          "|---|---|---|---|---|---|"]
    for k, t in rec["tests"].items():
        L.append(f"| test-{k} | {t['tests']} | {t['failures']} | {t['errors']} | {t['skipped']} | "
                 f"{t['source']} |")
    for k, t in rec["tests"].items():
        L += [f"- FAILED (test-{k}): `{f}`" for f in t.get("failed_tests", [])]
        if t.get("last_test_line"):
            L.append(f"- test-{k} was running: `{t['last_test_line']}`")
    e = rec["benchmarks"].get("elmo_bench")
    if isinstance(e, dict) and "throughput" in e:
        L += ["", f"## End to end ({e.get('arch')}{'' if e.get('complete') else ', INCOMPLETE'}; "
                  "full table in elmo_bench.md)", "",
              "| batch | variant | tokens/s | fraction of floor |", "|---|---|---|---|"]
        for r in sorted(e["throughput"], key=lambda r: (r["batch_size"], r["variant"])):
            f = r.get("fraction_of_floor")
            L.append(f"| {r['batch_size']} | {r['variant']} | {r['tokens_per_s']:,.0f} | "
                     f"{'-' if f is None else f'{100 * f:.2f}%'} |")
        for v, lat in e.get("latency", {}).items():
            L.append(f"- latency {v}: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms")
        for r in e.get("errors", []):
            L.append(f"- error {r['variant']} @ batch {r['batch_size']}: max abs {r['max_abs']:.2e}, "
                     f"rel RMS {r['rel_rms']:.2e}")
        for k, why in e.get("skipped", {}).items():
            L.append(f"- skipped/failed {k}: {why}")
    for k in ("bench_lstm", "bench_char_cnn"):
        b = rec["benchmarks"].get(k)
        if b:
            L.append(f"- {k}.json: {b.get('measurements')} measurements, complete {b.get('complete')}, "
                     f"{len(b.get('failed') or [])} failed")
    L += ["", "Every stage's log and the junit XML: logs.tar.gz.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
