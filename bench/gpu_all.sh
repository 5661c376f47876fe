#!/usr/bin/env bash
# bench/gpu_all.sh -- everything elmo_fast wants from a GPU machine, in ONE command of ~6 minutes.
#
#   bash bench/gpu_prep.sh             here, once: fills the ignored folder .whl/ (allennlp, fixtures)
#   bash bench/gpu_all.sh              on the GPU machine (the device tool runs it in the repo root)
#   bash bench/gpu_all.sh --dry-run    anywhere (or DRY_RUN=1): every stage's plumbing on the CPU
#
# Stages, most important first; each has its own cap, and the whole run stays under TOTAL_S
# (default 360 s, 600 for a dry run, whose caps are doubled too: a shared CPU is slow; a stage gets
# min(its cap, what is left)). A failed or cut stage is recorded and
# the next one runs. After EVERY stage, and on EXIT / TERM / INT, record.md + record.json and
# logs.tar.gz are rewritten in $OUT, so a run cut short still brings back what it did.
#   1  env          nvidia-smi, versions, git (env.json)
#      wheels       pip-installs wheels from .whl/ whose package is missing (no index, no deps)
#      install      ELMO_FAST_BUILD_CUDA=1 pip install --no-index --no-deps --no-build-isolation -e .
#                   (the CUDA extension must build; on failure again with ELMO_FAST_BUILD_CUDA=0)
#      info         import + `elmo-fast info --json` + the extension's status (info.json)
#                   from here on ELMO_FAST_JIT=0: nothing compiles nvcc at run time
#   2  test-cuda    the CUDA-kernel tests alone (tests/test_lstm_cuda.py -m gpu), CUDA_LAUNCH_BLOCKING=1,
#                   per-test timeout, faulthandler, -v. If it fails, the extension is disabled for
#                   the later stages (its .so moved aside, ELMO_FAST_JIT=0): the dispatcher then
#                   runs the Triton / torch backends instead of a kernel that failed or hung
#   3  test-rest    the rest of the suite on the GPU, without the extension rebuild test, the sm_90
#                   AOT compile tests (tests/test_triton_compile.py) and this script's own test
#   4  bench-elmo   `elmo-fast bench` on the original model: reference fp32, fast fp32 / bf16,
#                   allennlp, batches 256, 1, 64, the 20-token latency (elmo_bench.{json,md,png})
#   5  bench-lstm, bench-char-cnn   the kernel sweeps, most important first, with what is left
#
# $OUT (set by the device tool; elsewhere default bench/results/<date>-<device found>/, for a dry
# run ${TMPDIR:-/tmp}/elmo_gpu_all_dryrun) gets at most
# 8 flat files: record.md record.json logs.tar.gz elmo_bench.json elmo_bench.md elmo_bench.png
# bench_lstm.json bench_char_cnn.json. bench/README.md says how to run it and file the results.
#
# Settings: TOTAL_S (360), PYTHON (python3), OUT, GPU_ALL_STAGES=a,b (run only these stages),
# GPU_ALL_FAIL=a,b (these stages' commands fail: tests the failure paths).
set -u
set -o pipefail

DRY_RUN=${DRY_RUN:-0}
for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "gpu_all.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
if [ "$DRY_RUN" = 1 ]; then TOTAL_S=${TOTAL_S:-600}; else TOTAL_S=${TOTAL_S:-360}; fi   # a loaded CPU is slow
# nvcc where the CUDA image keeps it, if it is not on PATH (the install must find it to build)
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=$PATH:/usr/local/cuda/bin; fi
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

if [ "$DRY_RUN" = 1 ]; then
  TAG=cpu-dryrun
else
  TAG=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr -c 'A-Za-z0-9._-' '-' \
        | sed 's/-\+/-/g; s/^-//; s/-$//')
  TAG=${TAG:-nogpu}
fi
if [ "$DRY_RUN" = 1 ]; then
  OUT=${OUT:-${TMPDIR:-/tmp}/elmo_gpu_all_dryrun}   # a dry run's record does not belong in bench/results
else
  OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)-$TAG}
fi
mkdir -p "$OUT" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/elmo_gpu_all.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
STAGES=$LOGS/stages.tsv
: > "$STAGES"
NOTES=$LOGS/notes.txt
: > "$NOTES"
export GPU_ALL_DRY_RUN=$DRY_RUN GPU_ALL_LOGS=$LOGS GPU_ALL_OUT=$OUT GPU_ALL_T0=$T0 GPU_ALL_TOTAL_S=$TOTAL_S
CURRENT=""          # the stage running now (for the TERM handler)
DISABLED_SO=""      # the extension, when test-cuda failed and it was renamed aside
CHILD=""

note() { echo "$*" >> "$NOTES"; echo "   note: $*"; }
remaining() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }
listed() { case ",$2," in *",$1,"*) return 0 ;; esac; return 1; }

# record: rewrites record.json / record.md (stdlib Python, well under a second) and logs.tar.gz
record() {
  cp "$STAGES" "$LOGS/stages.tsv.snapshot" 2>/dev/null
  "$PY" "$ROOT/bench/gpu_record.py" > "$LOGS/record.log" 2>&1 || echo "record writer failed (logs/record.log)"
  tar -czf "$OUT/.logs.tar.gz.tmp" -C "$WORK" logs 2>/dev/null && mv -f "$OUT/.logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

finish() {
  trap - EXIT TERM INT HUP
  if [ -n "$DISABLED_SO" ] && [ -f "$DISABLED_SO.disabled-by-gpu_all" ]; then
    mv -f "$DISABLED_SO.disabled-by-gpu_all" "$DISABLED_SO" && note "the disabled extension is back at $DISABLED_SO"
  fi
  record
  echo
  echo "== done in $(( $(date +%s) - T0 ))s; files in $OUT"
  sed -n '/^## Stages/,/^## Tests/p' "$OUT/record.md" 2>/dev/null | head -n 30
  rm -rf "$WORK"
}

on_signal() {
  trap - TERM INT HUP
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null   # timeout passes it on to its command's group
  if [ -n "$CURRENT" ]; then
    printf '%s\tinterrupted\t-\t%s\tthe whole run got a signal\n' "$CURRENT" \
      "$(( $(date +%s) - ${STAGE_T0:-$T0} ))" >> "$STAGES"
  fi
  note "gpu_all.sh got a signal after $(( $(date +%s) - T0 ))s; the stages after ${CURRENT:-the last one} did not run"
  finish
  exit 143
}
trap on_signal TERM INT HUP
trap finish EXIT

# stage NAME CAP CMD...: runs CMD under timeout (its own process group) with a limit of min(CAP, time
# left), logging to $LOGS/NAME.log; appends "name status rc seconds note" to stages.tsv; records.
stage() {
  local name=$1 cap=$2; shift 2
  if [ -n "${GPU_ALL_STAGES:-}" ] && ! listed "$name" "$GPU_ALL_STAGES"; then
    return 0
  fi
  local left=$(( $(remaining) - 8 ))   # keep time for the record
  if [ "$left" -lt 5 ]; then
    printf '%s\tskipped\t-\t0\tno time left\n' "$name" >> "$STAGES"
    echo "== $name: skipped (no time left)"
    record
    return 0
  fi
  [ "$DRY_RUN" = 1 ] && cap=$(( cap * 2 ))   # the plumbing check runs on slow shared CPUs
  local limit=$cap
  [ "$limit" -gt "$left" ] && limit=$left
  STAGE_LIMIT=$limit
  if listed "$name" "${GPU_ALL_FAIL:-}"; then set -- bash -c "echo 'GPU_ALL_FAIL: $name made to fail'; exit 3"; fi
  echo "== $name (limit ${limit}s): $*"
  {
    echo "# stage $name, limit ${limit}s, started $(date -u +%H:%M:%S)"
    echo "# ELMO_FAST_JIT=${ELMO_FAST_JIT-unset} ELMO_FAST_BACKEND=${ELMO_FAST_BACKEND-unset}"
    echo "# command: $*"
  } > "$LOGS/$name.log"
  CURRENT=$name
  STAGE_T0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" >> "$LOGS/$name.log" 2>&1 &   # in the background: traps run at once
  CHILD=$!
  wait "$CHILD"
  local rc=$?
  CHILD=""
  CURRENT=""
  local d=$(( $(date +%s) - STAGE_T0 )) status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=cut
  elif [ $rc -eq 5 ] && [ "${name#test-}" != "$name" ]; then status=no-tests   # pytest: none selected
  elif [ $rc -ne 0 ]; then status=failed; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$d" "${NOTE:-}" >> "$STAGES"
  echo "   -> $status (rc $rc, ${d}s); last lines:"
  tail -n 3 "$LOGS/$name.log" | sed 's/^/      /'
  record
  return 0
}
skip() {
  if [ -n "${GPU_ALL_STAGES:-}" ] && ! listed "$1" "$GPU_ALL_STAGES"; then return 0; fi
  printf '%s\tskipped\t-\t0\t%s\n' "$1" "$2" >> "$STAGES"; echo "== $1: skipped ($2)"
}
status_of() { awk -F'\t' -v n="$1" '$1 == n { s = $2 } END { print s }' "$STAGES"; }

# ------------------------------------------------------------------ 1: env, install, import, info
stage env 30 "$PY" "$ROOT/bench/gpu_record.py" --env "$LOGS/env.json"

# what was brought along in .whl/ (bench/gpu_prep.sh): allennlp, the fixture, missing wheels
if [ -f .whl/allennlp_elmo.py ]; then export ELMO_ALLENNLP_TOOL=$ROOT/.whl/allennlp_elmo.py; fi
if [ -f .whl/allennlp-0.9.0-py3-none-any.whl ]; then
  export ELMO_ALLENNLP_WHEEL=$ROOT/.whl/allennlp-0.9.0-py3-none-any.whl
fi
if [ -f .whl/fixtures/elmo/sentences.json ]; then export ELMO_FAST_FIXTURES=$ROOT/.whl/fixtures/elmo; fi
if ls .whl/*.whl >/dev/null 2>&1 && [ "$DRY_RUN" != 1 ]; then
  stage wheels 40 bash -c "
    missing=()
    for w in .whl/*.whl; do
      n=\$(basename \"\$w\" | cut -d- -f1)
      [ \"\$n\" = allennlp ] && continue          # read by allennlp_elmo.py, never installed
      if '$PY' -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' \"\$n\" 2>/dev/null; then
        echo \"have \$n\"; else echo \"missing \$n: \$w\"; missing+=(\"\$w\"); fi
    done
    [ \${#missing[@]} -eq 0 ] && { echo 'nothing to install'; exit 0; }
    '$PY' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/elmo_site \"\${missing[@]}\"
  "
  [ -d /tmp/elmo_site ] && export PYTHONPATH=/tmp/elmo_site${PYTHONPATH:+:$PYTHONPATH}
else
  skip wheels "no wheels in .whl/, or a dry run"
fi

PIP_FLAGS=(--no-index --no-deps --no-build-isolation)
if [ "$DRY_RUN" = 1 ]; then
  # the same flags, without building: checks that the install resolves with no index and no isolation
  stage install 120 env ELMO_FAST_BUILD_CUDA=1 "$PY" -m pip install "${PIP_FLAGS[@]}" --dry-run -e .
else
  stage install 150 env ELMO_FAST_BUILD_CUDA=1 "$PY" -m pip install "${PIP_FLAGS[@]}" -e .
  if [ "$(status_of install)" != ok ] && { [ -z "${GPU_ALL_STAGES:-}" ] || listed install "$GPU_ALL_STAGES"; }; then
    note "the install with the CUDA extension failed (logs/install.log); installing without it"
    NOTE="ELMO_FAST_BUILD_CUDA=0" stage install-nocuda 90 env ELMO_FAST_BUILD_CUDA=0 "$PY" -m pip install \
      "${PIP_FLAGS[@]}" -e .
    if [ "$(status_of install-nocuda)" != ok ]; then
      export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
      note "the install without the extension failed too: running from src/ (no elmo_fast.kernels)"
    fi
  fi
fi
export ELMO_FAST_JIT=0   # from here on nothing runs nvcc behind a test's or a benchmark's back

stage info 45 "$PY" -c "
import contextlib, sys
import elmo_fast, elmo_fast.ops
from elmo_fast import cli
from elmo_fast.lstm_cuda import extension_status
print('import ok:', elmo_fast.__file__)
with open('$LOGS/info.json', 'w') as f, contextlib.redirect_stdout(f):
    rc = cli.main(['info', '--json'])
status = extension_status()
open('$LOGS/extension.txt', 'w').write(status + '\\n')
print('elmo-fast info --json: rc', rc, '; extension:', status)
sys.exit(rc)
"

# ---------------------------------------------------------------------- 2: the CUDA-kernel tests
PYTEST=("$PY" -m pytest -p no:cacheprovider -v -rfEs -o faulthandler_timeout=50)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  PYTEST+=(--timeout=60)
else
  note "pytest-timeout is not installed: no per-test timeout (the stage cap still holds)"
fi
stage test-cuda 90 env CUDA_LAUNCH_BLOCKING=1 "${PYTEST[@]}" --junitxml="$LOGS/junit-cuda.xml" \
  tests/test_lstm_cuda.py -m gpu
case "$(status_of test-cuda)" in
  failed|cut|interrupted)
    so=$("$PY" -c 'import importlib.util as u; s = u.find_spec("elmo_fast._lstm_cuda"); print(s.origin if s else "")' \
         2>/dev/null)
    if [ -n "$so" ] && [ -f "$so" ] && mv "$so" "$so.disabled-by-gpu_all"; then
      DISABLED_SO=$so   # renamed back when the run ends (finish), so a dry run leaves the checkout as it was
      note "test-cuda $(status_of test-cuda): CUDA extension disabled for the later stages ($so renamed, ELMO_FAST_JIT=0): they measure the Triton / torch backends"
    else
      note "test-cuda $(status_of test-cuda): no built extension to disable (ELMO_FAST_JIT=0 keeps it from being built)"
    fi
    export GPU_ALL_EXTENSION_DISABLED=1 ;;
esac

# ------------------------------------------------------------------------------ 3: the rest of the suite
REST=(tests --ignore=tests/test_lstm_cuda.py --ignore=tests/test_triton_compile.py --ignore=tests/test_gpu_all.py)
[ "$DRY_RUN" = 1 ] && REST=(tests/test_dispatch.py tests/test_kernel_offsets.py)   # plumbing only
stage test-rest 90 "${PYTEST[@]}" --junitxml="$LOGS/junit-rest.xml" "${REST[@]}"

# -------------------------------------------------------------------------------- 4: end to end
if [ "$DRY_RUN" = 1 ]; then
  BENCH=(--quick --arch tiny --device cpu --batch-sizes 2,1 --budget 0.05 --latency-reps 2)
else
  BENCH=(--device cuda --arch original --batch-sizes 256,1,64 --budget 1.0 --latency-reps 100)
fi
stage bench-elmo 120 "$PY" -m elmo_fast.bench "${BENCH[@]}" \
  --json "$OUT/elmo_bench.json" --md "$OUT/elmo_bench.md" --plot "$OUT/elmo_bench.png"

# ------------------------------------------------------------------- 5: kernel sweeps, with what is left
if [ "$DRY_RUN" = 1 ]; then
  stage bench-lstm 60 "$PY" bench/bench_lstm.py --dry-run --json "$OUT/bench_lstm.json"
  stage bench-char-cnn 60 "$PY" bench/bench_char_cnn.py --dry-run --sizes 16 --dtypes fp32 \
    --json "$OUT/bench_char_cnn.json"
else
  left=$(( $(remaining) - 8 ))
  lstm_cap=$(( left * 3 / 5 )); [ "$lstm_cap" -lt 20 ] && lstm_cap=$left
  stage bench-lstm "$lstm_cap" "$PY" bench/bench_lstm.py --max-s $(( lstm_cap - 15 )) \
    --json "$OUT/bench_lstm.json"
  left=$(( $(remaining) - 8 ))
  stage bench-char-cnn "$left" "$PY" bench/bench_char_cnn.py --max-s $(( left - 15 )) \
    --json "$OUT/bench_char_cnn.json"
fi
exit 0
