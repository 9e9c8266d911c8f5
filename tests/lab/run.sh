#!/usr/bin/env bash
# The device lab: a Raspberry Pi user's first day, on arm64 (bookworm and trixie, under qemu-user)
# and under systemd as PID 1 (an amd64 bookworm container, and the arm64 bookworm one booted under
# qemu-user). See README.md, "Device lab".
#
#   bash tests/lab/run.sh [PART...]     PART: systemd arm64-bookworm arm64-trixie arm64-systemd py313
#                                       (default: all)
#
# Builds (or reuses, from .cache/lab/rootfs) its root filesystems, prepares the wheel and converted
# models on this host, runs tests/lab/test_*.py in parts, writes .cache/lab/summary.json and ends
# with one line `lab: N passed, M failed`. Exit status 0 only when every check passed. Needs root
# (mmdebstrap, systemd-nspawn, binfmt_misc).
#
# Schedule (2 cores): the root filesystems build in parallel while this host converts the models;
# the systemd part runs as soon as its (quick) root filesystem is there, the three arm64 parts side
# by side once theirs are. Each part logs to .cache/lab/logs/PART.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
export EDGE_RESNET_LAB_CACHE=${EDGE_RESNET_LAB_CACHE:-$PWD/.cache/lab}
LAB=$EDGE_RESNET_LAB_CACHE
t0=$(date +%s)
mkdir -p "$LAB/logs"
rm -rf "$LAB/summary.json" "$LAB/host.json" "$LAB/parts" "$LAB"/logs/rootfs-*.log  # nothing left from an earlier run
ALL=(systemd arm64-bookworm arm64-trixie arm64-systemd)
[ -f tests/lab/test_convert_py313.py ] && ALL+=(py313)
if [ $# -gt 0 ]; then PARTS=("$@"); else PARTS=("${ALL[@]}"); fi
for p in "${PARTS[@]}"; do
  [[ " ${ALL[*]} " == *" $p "* ]] || { echo "lab: unknown part '$p' (parts: ${ALL[*]})" >&2; exit 2; }
done
want() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

finish() {
  echo "== lab took $(( $(date +%s) - t0 )) s"
  python3 tests/lab/summary.py "${PARTS[@]}"
}
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

if [ "$(id -u)" -ne 0 ]; then echo "lab: needs root (mmdebstrap, systemd-nspawn, binfmt_misc); run it with sudo" >&2; finish; exit 1; fi
bash tests/lab/host.sh || { finish; exit 1; }
bash tests/venvs.sh

build() {  # build NAME...: one after the other, each printing its path to logs/rootfs-NAME.path
  local name
  for name in "$@"; do
    bash tests/lab/rootfs.sh "$name" > "$LAB/logs/rootfs-$name.path" 2> "$LAB/logs/rootfs-$name.log" \
      || echo "lab: building root filesystem $name failed: $LAB/logs/rootfs-$name.log" >&2
  done
}
# part NAME PYTEST_ARGS...: one pytest run of the lab, its output in logs/NAME.log
part() {
  local name=$1; shift
  echo "== lab: part $name ($(elapsed))"
  EDGE_RESNET_LAB_RUN=1 EDGE_RESNET_LAB_PART=$name .venv/bin/python -m pytest -p no:cacheprovider -q -o addopts="" \
    "$@" > "$LAB/logs/$name.log" 2>&1 || true
  tail -n 1 "$LAB/logs/$name.log"
}

b1=0 b2=0 b3=0
if want arm64-bookworm || want arm64-systemd; then build arm64-bookworm & b1=$!; fi
if want arm64-trixie; then build arm64-trixie & b2=$!; fi
amd64=()  # only the root filesystems the chosen parts boot
if want systemd; then amd64+=(systemd); fi
if want py313; then amd64+=(amd64-trixie); fi
if [ ${#amd64[@]} -gt 0 ]; then build "${amd64[@]}" & b3=$!; fi
prep=0
.venv/bin/python tests/lab/prepare.py > "$LAB/logs/prepare.log" 2>&1 || prep=$?
tail -n 3 "$LAB/logs/prepare.log"
[ "$prep" -eq 0 ] || echo "lab: preparing the wheel and models failed (exit $prep): $LAB/logs/prepare.log" >&2
[ "$b3" = 0 ] || wait "$b3"
if want systemd; then part systemd tests/lab/test_systemd.py; fi
if want py313; then part py313 tests/lab/test_convert_py313.py; fi
for b in "$b1" "$b2"; do [ "$b" = 0 ] || wait "$b"; done
for name in arm64-bookworm arm64-trixie systemd amd64-trixie; do
  grep -h "built in" "$LAB/logs/rootfs-$name.log" 2>/dev/null || true
done
a1=0 a2=0 a3=0
if want arm64-bookworm; then part arm64-bookworm tests/lab/test_arm64.py -k bookworm & a1=$!; fi
if want arm64-trixie; then part arm64-trixie tests/lab/test_arm64.py -k trixie & a2=$!; fi
# systemd as PID 1 on aarch64: the same field day as the systemd part, on the Pi-like root
# filesystem; DevicePolicy's BPF filter is not enforced under qemu-user (tests/lab/test_systemd.py)
if want arm64-systemd; then
  EDGE_RESNET_LAB_SYSTEMD_ARCH=arm64 part arm64-systemd tests/lab/test_systemd.py -k "not device_policy" & a3=$!
fi
for a in "$a1" "$a2" "$a3"; do [ "$a" = 0 ] || wait "$a"; done
finish
