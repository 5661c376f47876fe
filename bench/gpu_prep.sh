#!/usr/bin/env bash
# bench/gpu_prep.sh -- run HERE (no GPU needed), in the repository the device tool sends, once before
# a GPU session. Fills the git-ignored folder .whl/ with what the GPU machine lacks (it has no
# network): allennlp_elmo.py and the allennlp 0.9.0 wheel (the allennlp comparison) and the ELMo
# fixture (the fixture tests and realistic sentences). gpu_all.sh finds them there.
#   bash bench/gpu_prep.sh            (PYTHON=... picks the interpreter that has elmo_fast installed)
set -eu
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
WHEEL=allennlp-0.9.0-py3-none-any.whl

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
if ! grep -qx '/.whl/' "$exclude" 2>/dev/null; then
  [ -s "$exclude" ] && [ -n "$(tail -c 1 "$exclude")" ] && echo >> "$exclude"   # end the last line first
  echo '/.whl/' >> "$exclude"
fi
mkdir -p .whl/fixtures
git check-ignore -q .whl/ || { echo "gpu_prep.sh: .whl/ is not ignored by git ($exclude)" >&2; exit 1; }

tool=$("$PY" -c 'from elmo_fast.bench.allennlp import tool_path; print(tool_path() or "")')
if [ -z "$tool" ]; then
  echo "gpu_prep.sh: allennlp_elmo.py not found (set ELMO_ALLENNLP_TOOL; it lives in shared/tools)" >&2; exit 1
fi
[ "$tool" -ef .whl/allennlp_elmo.py ] || cp "$tool" .whl/allennlp_elmo.py

if [ ! -f ".whl/$WHEEL" ]; then
  for c in "${ELMO_ALLENNLP_WHEEL:-}" "$(dirname "$tool")/$WHEEL" "$HOME/.cache/elmo_fast_tools/$WHEEL"; do
    if [ -n "$c" ] && [ -f "$c" ]; then cp "$c" ".whl/$WHEEL"; break; fi
  done
fi
[ -f ".whl/$WHEEL" ] || "$PY" -m pip download -q --no-deps allennlp==0.9.0 -d .whl

fx=$("$PY" -c 'from elmo_fast.bench.inputs import fixtures_dir; print(fixtures_dir() or "")')
if [ -n "$fx" ]; then
  rm -rf .whl/fixtures/elmo && cp -r "$fx" .whl/fixtures/elmo
else
  echo "gpu_prep.sh: the ELMo fixture was not found (ELMO_FAST_FIXTURES); the fixture tests will skip there" >&2
fi

echo "in .whl/ (carried with run(..., carry=[\".whl\"])):"
du -sh .whl/* | sed "s/^/  /"; du -sh .whl | sed "s/^/  total /"
size=$(du -sb .whl | cut -f1)
[ "$size" -lt $(( 48 * 1024 * 1024 )) ] || echo "gpu_prep.sh: WARNING .whl/ is $size bytes; the tree that travels must stay under 64 MiB" >&2
