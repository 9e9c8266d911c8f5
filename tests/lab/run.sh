#!/usr/bin/env bash
# The device lab: a Raspberry Pi user's first day, on arm64 (bookworm and trixie, under qemu-user)
# and under systemd as PID 1 (an amd64 bookworm container). See README.md, "Device lab".
#
#   bash tests/lab/run.sh [pytest args, e.g. -k arm64 or -k systemd]
#
# Builds (or reuses, from .cache/lab/rootfs) its root filesystems, prepares the wheel and a converted
# model on this host, runs tests/lab/test_*.py, writes .cache/lab/summary.json and ends with one line
# `lab: N passed, M failed`. Exit status 0 only when every check passed. Needs root (mmdebstrap,
# systemd-nspawn, binfmt_misc).
set -euo pipefail
cd "$(dirname "$0")/../.."
export EDGE_RESNET_LAB_CACHE=${EDGE_RESNET_LAB_CACHE:-$PWD/.cache/lab}
LAB=$EDGE_RESNET_LAB_CACHE
t0=$(date +%s)
mkdir -p "$LAB/logs"
rm -f "$LAB/summary.json" "$LAB/host.json"

finish() {  # the closing line, from summary.json (a lab that broke before its checks counts as failed)
  local passed=0 failed=1
  if [ -f "$LAB/summary.json" ]; then
    python3 - "$LAB/summary.json" <<'PY'
import json, sys
for name, r in json.load(open(sys.argv[1]))["results"].items():
    print(f"  {'ok  ' if r['ok'] else 'FAIL'} {name}: {r['figure'].splitlines()[0] if r['figure'] else ''}"[:400])
PY
    read -r passed failed < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"].values(); print(sum(x["ok"] for x in r), sum(not x["ok"] for x in r))' "$LAB/summary.json")
  fi
  echo "== lab took $(( $(date +%s) - t0 )) s; summary in $LAB/summary.json"
  echo "lab: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

if [ "$(id -u)" -ne 0 ]; then echo "lab: needs root (mmdebstrap, systemd-nspawn, binfmt_misc); run it with sudo" >&2; finish; exit 1; fi
bash tests/lab/host.sh || { finish; exit 1; }
bash tests/venvs.sh

# the three root filesystems build in parallel (downloads and qemu), while this host converts a model
pids=()
for name in arm64-bookworm arm64-trixie systemd; do
  bash tests/lab/rootfs.sh "$name" > "$LAB/logs/rootfs-$name.path" 2> "$LAB/logs/rootfs-$name.log" &
  pids+=($!)
done
prep=0
.venv/bin/python tests/lab/prepare.py || prep=$?
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "lab: building a root filesystem failed; its log:" >&2
    tail -n 20 "$LAB/logs/rootfs-"*.log >&2 || true
  fi
done
[ "$prep" -eq 0 ] || echo "lab: preparing the wheel and model failed (exit $prep)" >&2
for name in arm64-bookworm arm64-trixie systemd; do
  grep -h "built in" "$LAB/logs/rootfs-$name.log" || echo "== lab: $name reused from the cache: $(cat "$LAB/logs/rootfs-$name.path")"
done

echo "== lab: checks ($(( $(date +%s) - t0 )) s so far)"
EDGE_RESNET_LAB_RUN=1 .venv/bin/python -m pytest -p no:cacheprovider -q -o addopts="" tests/lab "$@" || true
finish
