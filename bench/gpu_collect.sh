#!/usr/bin/env bash
# bench/gpu_collect.sh FILES_AT -- files a gpu_all.sh run into the repository: copies what the device
# tool brought back (its reply's files_at folder) into bench/results/<date>-<GPU found>/, named from
# record.json (the device the run actually found), and prints record.md.
set -eu
src=${1:?usage: bash bench/gpu_collect.sh FILES_AT (the folder the device tool reply names)}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
[ -f "$src/record.json" ] || { echo "gpu_collect.sh: no record.json in $src" >&2; exit 1; }
name=$("$PY" - "$src/record.json" <<'PYEOF'
import json, re, sys
rec = json.load(open(sys.argv[1]))
env = rec.get("environment", {})
tag = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._-]", "-", env.get("gpu") or "nogpu")).strip("-")
date = (env.get("date") or rec.get("written") or "unknown")[:10]
print(f"{date}-{tag}{'-dryrun' if rec.get('dry_run') else ''}")
PYEOF
)
dest=$ROOT/bench/results/$name
mkdir -p "$dest"
for f in record.md record.json elmo_bench.json elmo_bench.md elmo_bench.png bench_lstm.json bench_char_cnn.json \
         logs.tar.gz; do
  [ -f "$src/$f" ] && cp "$src/$f" "$dest/$f"
done
echo "filed in bench/results/$name:"
ls -l "$dest"
echo
cat "$dest/record.md"
