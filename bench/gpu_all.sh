#!/usr/bin/env bash
# bench/gpu_all.sh -- everything elmo_fast wants from a GPU machine, in one command (issue #5).
#
#   bash bench/gpu_all.sh              on the GPU machine (the device tool runs it in the repo root)
#   bash bench/gpu_all.sh --dry-run    anywhere (or DRY_RUN=1): no install, no GPU; the benchmarks
#                                      run in their --quick / --dry-run CPU modes
#
# Stages, each with its own time limit; a failing or timed-out stage is recorded and the next one
# runs anyway. The whole run is kept under TOTAL_S seconds (default 530, inside the device tool's
# 10-minute limit per command); stages later in the list get what is left.
#   env        nvidia-smi, Python / torch / triton / CUDA versions, nvcc
#   wheels     pip-installs wheels from .whl/ whose package is missing (no index, no deps)
#   install    pip install --no-deps --no-build-isolation -e .  (builds the CUDA extension with
#              nvcc for sm_90); on failure again with ELMO_FAST_BUILD_CUDA=0, then PYTHONPATH=src
#   test-gpu   pytest -m gpu            (junit XML)
#   bench-elmo python -m elmo_fast.bench (= `elmo-fast bench`) --json --md --plot
#   bench-lstm / bench-char-cnn   bench/bench_lstm.py, bench/bench_char_cnn.py --json (if present)
#   test-rest  pytest -m "not gpu"      (junit XML; with test-gpu this is the full suite)
#   record     record.md (for people) + record.json (for tools) + logs.tar.gz
#
# Output: $OUT (set by the device tool; default bench/results/<date>-<gpu>/). The device tool
# brings back at most 8 files, no deeper than 2 folders, so everything lands flat in $OUT:
#   record.md  record.json  elmo_bench.md  elmo_bench.json  elmo_bench.png  logs.tar.gz
#
# Wheels the GPU machine lacks (it has no network). Fetch them here, in the repo root, into the
# ignored folder .whl/ (see /work/.library/device/README.md), and name .whl in the run's `carry`:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl NAME==VERSION              # only for packages missing there (tqdm, matplotlib are there)
#   cp ../shared/tools/allennlp_elmo.py .whl/
#   python3 -m pip download --no-deps allennlp==0.9.0 -d .whl
#     (the allennlp comparison: the tool + the allennlp 0.9.0 wheel, pure Python; not installed,
#      the tool reads it; a copy may already sit in ~/.cache/elmo_fast_tools/)
# Then, through the device tool:  run(command="bash bench/gpu_all.sh", carry=[".whl"], timeout_s=600)
set -u
set -o pipefail

DRY_RUN=${DRY_RUN:-0}
for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
    *) echo "gpu_all.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}           # PYTHON=/path/to/venv/bin/python to choose another interpreter
command -v "$PY" >/dev/null 2>&1 || PY=python
TOTAL_S=${TOTAL_S:-530}
T0=$(date +%s)
DATE=$(date -u +%Y-%m-%d)
export PYTHONUNBUFFERED=1

if [ "$DRY_RUN" = 1 ]; then
  GPU_TAG=cpu-dryrun
else
  GPU_TAG=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr -c 'A-Za-z0-9._-' '-' | sed 's/-\+/-/g; s/-$//')
  GPU_TAG=${GPU_TAG:-nogpu}
fi
OUT=${OUT:-$ROOT/bench/results/$DATE-$GPU_TAG}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/elmo_gpu_all.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
STAGES=$WORK/stages.tsv
: > "$STAGES"

remaining() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }

# stage NAME LIMIT_S CMD...   runs CMD with a time limit (capped by the time left), logs to
# $LOGS/NAME.log, appends "name<TAB>status<TAB>rc<TAB>seconds<TAB>note" to $STAGES
stage() {
  local name=$1 limit=$2; shift 2
  local left=$(( $(remaining) - 25 ))   # keep time for the record
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped\t-\t0\tno time left\n' "$name" >> "$STAGES"
    echo "== $name: skipped (no time left)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local s=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  local d=$(( $(date +%s) - s )) status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout
  elif [ $rc -eq 5 ] && [ "${name#test-}" != "$name" ]; then status=no-tests   # pytest: none selected
  elif [ $rc -ne 0 ]; then status=failed; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$d" "${NOTE:-}" >> "$STAGES"
  echo "   -> $status (rc $rc, ${d}s); last lines:"
  tail -n 4 "$LOGS/$name.log" | sed 's/^/      /'
  return 0
}
skip() { printf '%s\tskipped\t-\t0\t%s\n' "$1" "$2" >> "$STAGES"; echo "== $1: skipped ($2)"; }

# ---- env
stage env 30 bash -c "
  echo '# date'; date -u; echo '# uname'; uname -a
  echo '# nvidia-smi'; nvidia-smi || echo 'nvidia-smi not available'
  echo '# nvcc'; nvcc --version || echo 'nvcc not found'
  echo '# python'; $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())'
  $PY -c 'import triton; print(\"triton\", triton.__version__)' || true
  echo '# git'; git rev-parse HEAD; git status --short | head -n 50
"

# ---- wheels from .whl/ (only packages that are missing)
if ls .whl/*.whl >/dev/null 2>&1; then
  if [ -f .whl/allennlp-0.9.0-py3-none-any.whl ]; then
    export ELMO_ALLENNLP_WHEEL=$ROOT/.whl/allennlp-0.9.0-py3-none-any.whl
  fi
  [ -f .whl/allennlp_elmo.py ] && export ELMO_ALLENNLP_TOOL=$ROOT/.whl/allennlp_elmo.py
  if [ "$DRY_RUN" = 1 ]; then
    skip wheels "dry run (would install missing packages from .whl/)"
  else
    stage wheels 60 bash -c "
      missing=()
      for w in .whl/*.whl; do
        n=\$(basename \"\$w\" | cut -d- -f1)
        [ \"\$n\" = allennlp ] && continue          # read by allennlp_elmo.py, never installed
        if $PY -c \"import importlib.metadata as m, sys; m.version(sys.argv[1])\" \"\$n\" 2>/dev/null; then
          echo \"have \$n\"; else echo \"missing \$n: \$w\"; missing+=(\"\$w\"); fi
      done
      [ \${#missing[@]} -eq 0 ] && { echo 'nothing to install'; exit 0; }
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/elmo_site \"\${missing[@]}\"
    "
    [ -d /tmp/elmo_site ] && export PYTHONPATH=/tmp/elmo_site${PYTHONPATH:+:$PYTHONPATH}
  fi
else
  skip wheels "no .whl/ folder"
fi

# ---- install (builds the CUDA extension)
INSTALL_NOTE=""
if [ "$DRY_RUN" = 1 ]; then
  skip install "dry run: uses the package already installed"
else
  stage install 200 $PY -m pip install --no-deps --no-build-isolation -e .
  if ! grep -q $'^install\tok' "$STAGES"; then
    INSTALL_NOTE="editable install with the CUDA extension failed (see logs/install.log)"
    NOTE="$INSTALL_NOTE" stage install-nocuda 120 env ELMO_FAST_BUILD_CUDA=0 $PY -m pip install --no-deps --no-build-isolation -e .
    if ! grep -q $'^install-nocuda\tok' "$STAGES"; then
      export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
      INSTALL_NOTE="$INSTALL_NOTE; without the extension failed too: running from src/ via PYTHONPATH (no elmo_fast.kernels)"
    fi
  fi
  $PY -c "import elmo_fast.lstm_cuda as m; print('cuda extension:', getattr(m, 'not_supported_reasons', None))" \
    > "$LOGS/extension-check.log" 2>&1 || true
fi

# ---- tests on the GPU
PYTEST_TIMEOUT_ARGS=""
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST_TIMEOUT_ARGS="--timeout=120"
stage test-gpu 100 $PY -m pytest -m gpu -q -rfEs $PYTEST_TIMEOUT_ARGS --junitxml="$LOGS/junit-gpu.xml" -p no:cacheprovider

# ---- benchmarks
if [ "$DRY_RUN" = 1 ]; then
  stage bench-elmo 200 $PY -m elmo_fast.bench --quick --device cpu \
    --json "$OUT/elmo_bench.json" --md "$OUT/elmo_bench.md" --plot "$OUT/elmo_bench.png"
else
  stage bench-elmo 200 $PY -m elmo_fast.bench --device cuda --budget 1.5 --latency-reps 100 \
    --json "$OUT/elmo_bench.json" --md "$OUT/elmo_bench.md" --plot "$OUT/elmo_bench.png"
fi
for b in lstm char_cnn; do
  script=bench/bench_$b.py
  name=bench-${b//_/-}
  if [ ! -f "$script" ]; then skip "$name" "$script not found"; continue; fi
  if [ "$DRY_RUN" = 1 ]; then
    stage "$name" 120 $PY "$script" --dry-run --json "$LOGS/bench_$b.json"
  else
    stage "$name" 90 $PY "$script" --json "$LOGS/bench_$b.json"
  fi
done

# ---- the rest of the suite (with test-gpu: the full suite)
stage test-rest 240 $PY -m pytest -m "not gpu" -q -rfE $PYTEST_TIMEOUT_ARGS --junitxml="$LOGS/junit-rest.xml" -p no:cacheprovider

# ---- record
cp "$STAGES" "$LOGS/stages.tsv"
DRY_RUN=$DRY_RUN INSTALL_NOTE="$INSTALL_NOTE" LOGS="$LOGS" OUT="$OUT" T0="$T0" $PY - <<'PYEOF' > "$LOGS/record.log" 2>&1 || echo "record writer failed (see logs/record.log)"
import datetime, glob, json, os, platform, subprocess, sys, time
import xml.etree.ElementTree as ET

logs, out = os.environ["LOGS"], os.environ["OUT"]

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""

env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "command": "bash bench/gpu_all.sh" + (" --dry-run" if os.environ.get("DRY_RUN") == "1" else ""),
       "dry_run": os.environ.get("DRY_RUN") == "1", "commit": sh("git rev-parse HEAD"),
       "dirty": bool(sh("git status --porcelain --untracked-files=no")), "python": platform.python_version(),
       "hostname": platform.node()}
gpu = sh("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader")
env["gpu"], env["driver"] = (gpu.split(", ")[0], gpu.split(", ")[1]) if gpu else (None, None)
env["nvcc"] = sh("nvcc --version | tail -n 2 | head -n 1") or None
try:
    import torch
    env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
except Exception as exc:
    env["torch"] = f"not importable: {exc}"
try:
    import triton
    env["triton"] = triton.__version__
except Exception as exc:
    env["triton"] = f"not importable: {exc}"
env["install_note"] = os.environ.get("INSTALL_NOTE") or None

stages = []
for line in open(os.path.join(logs, "stages.tsv")):
    name, status, rc, sec, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    stages.append({"stage": name, "status": status, "rc": rc, "seconds": int(sec or 0), "note": note})

tests = {}
for path in sorted(glob.glob(os.path.join(logs, "junit-*.xml"))):
    key = os.path.basename(path)[6:-4]
    try:
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        agg = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        agg["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                               if c.find("failure") is not None or c.find("error") is not None][:50]
        tests[key] = agg
    except Exception as exc:
        tests[key] = {"error": f"{type(exc).__name__}: {exc}"}

benches = {}
for name, path in (("elmo", os.path.join(out, "elmo_bench.json")),
                   ("lstm", os.path.join(logs, "bench_lstm.json")),
                   ("char_cnn", os.path.join(logs, "bench_char_cnn.json"))):
    if os.path.exists(path):
        try:
            benches[name] = json.load(open(path))
        except Exception as exc:
            benches[name] = {"error": f"unreadable: {exc}"}

rec = {"kind": "gpu_all", "environment": env, "stages": stages, "tests": tests, "benchmarks": benches,
       "wall_s": int(time.time()) - int(os.environ["T0"])}
json.dump(rec, open(os.path.join(out, "record.json"), "w"), indent=1, default=str)

L = [f"# gpu_all: {env.get('gpu') or 'no GPU'}{' (DRY RUN on the CPU)' if env['dry_run'] else ''}", "",
     f"- date: {env['date']}; commit `{env['commit']}`{' (uncommitted changes)' if env['dirty'] else ''}",
     f"- command: `{env['command']}`; wall {rec['wall_s']} s",
     f"- GPU: {env.get('gpu')}; driver {env.get('driver')}; nvcc: {env.get('nvcc')}",
     f"- torch {env.get('torch')} (CUDA {env.get('cuda')}), triton {env.get('triton')}, Python {env['python']}"]
if env["install_note"]:
    L.append(f"- install: {env['install_note']}")
L += ["", "## Stages", "", "| stage | status | rc | seconds | note |", "|---|---|---|---|---|"]
L += [f"| {s['stage']} | {s['status']} | {s['rc']} | {s['seconds']} | {s['note']} |" for s in stages]
L += ["", "## Tests", "", "| run | tests | failures | errors | skipped |", "|---|---|---|---|---|"]
for k, t in tests.items():
    if "error" in t:
        L.append(f"| {k} | {t['error']} | | | |")
    else:
        L.append(f"| {k} | {t['tests']} | {t['failures']} | {t['errors']} | {t['skipped']} |")
for k, t in tests.items():
    for f in t.get("failed_tests", []):
        L.append(f"- FAILED ({k}): `{f}`")
e = benches.get("elmo")
if isinstance(e, dict) and "throughput" in e:
    L += ["", f"## End to end ({e.get('arch')}; full table in elmo_bench.md)", "",
          "| batch | variant | tokens/s | fraction of floor |", "|---|---|---|---|"]
    for r in e["throughput"]:
        f = r.get("fraction_of_floor")
        L.append(f"| {r['batch_size']} | {r['variant']} | {r['tokens_per_s']:,.0f} | "
                 f"{'-' if f is None else f'{100 * f:.2f}%'} |")
    for v, lat in e.get("latency", {}).items():
        L.append(f"- latency {v}: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms")
    for r in e.get("errors", []):
        L.append(f"- error {r['variant']} @ batch {r['batch_size']}: max abs {r['max_abs']:.2e}, rel RMS {r['rel_rms']:.2e}")
for k in ("lstm", "char_cnn"):
    if k in benches:
        L.append(f"- bench_{k}.py: JSON record in record.json['benchmarks']['{k}'] and logs.tar.gz")
L += ["", "Logs, junit XML and the other benchmarks' JSON: logs.tar.gz.", ""]
open(os.path.join(out, "record.md"), "w").write("\n".join(L))
print("\n".join(L))
PYEOF
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null || echo "could not write logs.tar.gz"
rm -rf "$WORK"

echo
echo "== summary ($(( $(date +%s) - T0 ))s; files in $OUT)"
sed -n '/^## Stages/,$p' "$OUT/record.md" 2>/dev/null | head -n 60
ls -la "$OUT"
