"""bench/gpu_all.sh on the CPU (--dry-run): the plumbing the 15-minute GPU session depends on.
Every stage records its status; the record and logs are rewritten after every stage and on TERM;
a failed CUDA-kernel stage disables the extension for the later stages; a run out of time skips
what is left and says so; what comes back fits the device tool's limits (8 flat files)."""
from __future__ import annotations

import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_all.sh"
ALL_STAGES = ["env", "wheels", "install", "info", "test-cuda", "test-rest", "bench-elmo", "bench-lstm",
              "bench-char-cnn"]


def start(out, **env):
    e = dict(os.environ, OUT=str(out), PYTHON=sys.executable, **{k: str(v) for k, v in env.items()})
    e.pop("TRITON_INTERPRET", None)  # the stages choose for themselves, as on the GPU machine
    return subprocess.Popen(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def dry_run(out, timeout=600, **env):
    p = start(out, **env)
    log, _ = p.communicate(timeout=timeout)
    return p.returncode, log, json.loads((out / "record.json").read_text())


def stage_log(out, name):
    with tarfile.open(out / "logs.tar.gz") as tar:
        return tar.extractfile(f"logs/{name}.log").read().decode()


def statuses(rec):
    return {s["stage"]: s["status"] for s in rec["stages"]}


def check_files_come_back(out):
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files


@pytest.mark.slow
def test_dry_run_exercises_every_stage(tmp_path):
    t = time.monotonic()
    rc, log, rec = dry_run(tmp_path)
    wall = time.monotonic() - t
    assert rc == 0, log
    st = statuses(rec)
    assert list(st) == ALL_STAGES, log
    bad = {k: v for k, v in st.items() if v not in ("ok", "skipped")}
    assert not bad, f"{bad}\n{log}"
    assert rec["dry_run"] and rec["not_run"] == [] and rec["info"]["ops"]
    assert rec["tests"]["cuda"]["source"] == "junit" and rec["tests"]["rest"]["failures"] == 0
    e = rec["benchmarks"]["elmo_bench"]
    assert e["complete"] and {r["variant"] for r in e["throughput"]} >= {"reference", "fast"}
    assert rec["benchmarks"]["bench_lstm"]["complete"] and rec["benchmarks"]["bench_char_cnn"]["complete"]
    check_files_come_back(tmp_path)
    assert "## Stages" in (tmp_path / "record.md").read_text()
    load = os.getloadavg()[0]
    if load <= (os.cpu_count() or 1):  # on a machine not shared with other jobs: the 5-minute budget
        assert wall < 300, f"the dry run took {wall:.0f} s (budget: 5 minutes; load average {load:.1f})"


def test_failed_cuda_tests_disable_the_extension_for_later_stages(tmp_path):
    rc, log, rec = dry_run(tmp_path, GPU_ALL_STAGES="test-cuda,bench-lstm", GPU_ALL_FAIL="test-cuda")
    assert rc == 0, log
    assert statuses(rec) == {"test-cuda": "failed", "bench-lstm": "ok"}
    assert rec["extension_disabled"] and any("test-cuda failed" in n for n in rec["notes"])
    assert "ELMO_FAST_JIT=0" in stage_log(tmp_path, "bench-lstm")
    assert rec["benchmarks"]["bench_lstm"]["complete"]
    assert "DISABLED" in (tmp_path / "record.md").read_text()
    check_files_come_back(tmp_path)


def test_out_of_time_stages_are_skipped_and_recorded(tmp_path):
    rc, log, rec = dry_run(tmp_path, TOTAL_S=20, GPU_ALL_STAGES="info,bench-lstm,bench-char-cnn")
    assert rc == 0, log
    st = statuses(rec)
    assert st["info"] in ("ok", "cut") and st["bench-lstm"] in ("ok", "cut", "skipped")
    # how far the 20 s reach depends on the machine's speed: the last stage is either cut at the total
    # limit or, when too little is left to start it, skipped with the reason
    assert st["bench-char-cnn"] in ("cut", "skipped"), log
    assert "cut" in st.values() or "no time left" in {s["note"] for s in rec["stages"]}, log
    assert rec["wall_s"] <= 20 + 5, log  # the total limit holds (5 s: the kill-after grace of a cut stage)


def test_term_mid_stage_keeps_the_record(tmp_path):
    p = start(tmp_path, GPU_ALL_STAGES="bench-lstm,bench-char-cnn")
    seen = io.StringIO()
    deadline = time.monotonic() + 300
    for line in p.stdout:  # wait until the second stage is running
        seen.write(line)
        if line.startswith("== bench-char-cnn"):
            break
        assert time.monotonic() < deadline, seen.getvalue()
    time.sleep(1)
    before = json.loads((tmp_path / "record.json").read_text())  # written after the first stage already
    assert statuses(before) == {"bench-lstm": "ok"}
    p.send_signal(signal.SIGTERM)
    rest, _ = p.communicate(timeout=60)
    assert p.returncode == 143, seen.getvalue() + rest
    rec = json.loads((tmp_path / "record.json").read_text())
    assert statuses(rec) == {"bench-lstm": "ok", "bench-char-cnn": "interrupted"}
    assert any("signal" in n for n in rec["notes"])
    assert "bench-char-cnn" in stage_log(tmp_path, "bench-char-cnn")
    check_files_come_back(tmp_path)
