#!/usr/bin/env bash
# Issue 25 (must-show 4): README.md's "Raspberry Pi AI Camera (IMX500)" lines, pasted in order into a
# clean checkout of the committed HEAD, with the conversion run offline.
#
# - The checkout: `git clone` of HEAD into a temporary folder, beside a link `shared` -> the real
#   ../shared (or shared/data -> $EDGE_RESNET_DATA), so the README's ../shared/data paths resolve;
#   no data is copied.
# - The lines: read from the checkout's README by tests/helpers/readme_blocks.py (`\` continuations
#   joined), each printed, then run by bash in the checkout; the first that fails stops the script
#   (exit 1), named with its exit code and its output's end. Output goes to LOG_DIR/NN.log.
# - python3.12: the interpreter the README names. When `python3.12` does not run here (pyenv's shim
#   without 3.12 selected), pyenv's newest 3.12 goes first on PATH; the line is not rewritten.
# - The apt line: it is not run when dpkg says every package it names is installed (said so, with the
#   installed and candidate versions): run, it could only upgrade the machine's Java, which a test must
#   not do on a shared machine. Java 17+ is then checked, which is what the line is for. A package
#   missing, or IMX500_README_APT=run, runs it: as written, or without `sudo` when we are root and
#   there is no sudo (root needs none); apt may then ask before installing.
# - The pip line runs as written, against this machine's pip configuration (`pip config list` is
#   shown), with pip's cache in the temporary folder, so every run downloads afresh and leaves no
#   gigabytes in ~/.cache/pip. Its time and the venv's size are printed.
# - The convert line runs under `unshare --net`: a new network namespace whose only interface is a
#   loopback that is down, so any network access fails. That it does is shown first, on every run:
#   urllib.request.urlopen('https://pypi.org') inside it must fail. Then its model:/memory:/report:
#   lines, the files it must write (<name>_imx500.zip, <name>_imx500.json, the report), and the report's
#   top-1 drop and agreement with float. The report and metadata are copied to LOG_DIR.
#
# Usage: bash tests/imx500/readme.sh [--keep] [LOG_DIR]      (LOG_DIR default: out/imx500/readme)
#   --keep or IMX500_README_KEEP=1: keep the temporary folder (its venv is ~6.5 GB; deleted by default);
#     its path and the venv's are written to LOG_DIR/kept, one a line (tests/imx500/run.sh uses them).
#   IMX500_README_SMOKE=1: smoke mode: the convert line gets `--calib-count 8 --eval-limit 40` appended
#     (minutes instead of ~10); with 40 images the gate may refuse (exit 8, <name>_imx500.rejected.zip),
#     which smoke mode accepts and says.
#   EDGE_RESNET_DATA: the data folder (default ../shared/data); TMPDIR: where the temporary folder goes.
# Needs: git, bash, unshare (util-linux; root, or unprivileged user namespaces), network for pip.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$(pwd)
T0=$SECONDS
KEEP=${IMX500_README_KEEP:-0}
if [ "${1:-}" = "--keep" ]; then KEEP=1; shift; fi
LOG=${1:-out/imx500/readme}
mkdir -p "$LOG" && LOG=$(cd "$LOG" && pwd)
rm -f "$LOG/kept" "$LOG"/[0-9][0-9].log
HEADING="### Raspberry Pi AI Camera (IMX500)"
SMOKE_ARGS="--calib-count 8 --eval-limit 40"

say() { echo "== $*"; }
die() { echo "== FAILED: $*"; say "total $((SECONDS - T0)) s"; exit 1; }
elapsed() { local s=$((SECONDS - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

if [ -n "${EDGE_RESNET_DATA:-}" ]; then
  DATA=$(cd "$EDGE_RESNET_DATA" && pwd) || die "EDGE_RESNET_DATA=$EDGE_RESNET_DATA is not a folder"
else
  [ -d ../shared/data ] || die "no ../shared/data beside the project; set EDGE_RESNET_DATA"
  SHARED=$(cd ../shared && pwd)
fi
# a new network namespace: root may make one; others through a user namespace (if the kernel allows)
NETNS=(unshare --net)
[ "$(id -u)" = 0 ] || NETNS+=(--map-root-user)
"${NETNS[@]}" true 2> /dev/null || die "'${NETNS[*]}' does not work here; it is needed to run the conversion offline"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-resnet-readme.XXXXXX") || die "mktemp"
cleanup() {
  if [ "$KEEP" = 1 ]; then
    say "kept: $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1))"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
CO=$WORK/edge-resnet
if [ -n "${DATA:-}" ]; then mkdir "$WORK/shared" && ln -s "$DATA" "$WORK/shared/data"; else ln -s "$SHARED" "$WORK/shared"; fi
git clone -q "$REPO" "$CO" || die "git clone $REPO"
say "clean checkout of HEAD $(git -C "$CO" log -1 --format='%h (%cd)' --date=short) in $CO"
dirty=$(git status --porcelain -- README.md pyproject.toml tests/helpers/readme_blocks.py)
[ -z "$dirty" ] || say "note: uncommitted changes here are not tested (HEAD is): $(echo "$dirty" | tr '\n' ' ')"
say "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores"

if ! python3.12 -V > /dev/null 2>&1; then
  d=$(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin | sort -V | tail -n 1)
  [ -x "$d/python3.12" ] || die "python3.12 is not installed (the README's line needs it)"
  export PATH="$d:$PATH"
  say "python3.12 does not run from PATH here: pyenv's $d goes first"
fi
say "python3.12 is $(command -v python3.12): $(python3.12 -V 2>&1)"

cd "$CO" || die "cd $CO"
mapfile -t LINES < <(python3.12 -m tests.helpers.readme_blocks README.md "$HEADING") || true
[ "${#LINES[@]}" -gt 0 ] || die "README.md has no \`\`\`sh lines under '$HEADING'"
printf '%s\n' "${LINES[@]}" | grep -q 'edge-resnet convert' || die "the README block has no convert line"
export PIP_CACHE_DIR=$WORK/pip-cache

run_line() {  # run_line N LINE [WRAPPER...]: print the line, run it by bash (under WRAPPER), log to LOG/N.log
  local n=$1 line=$2; shift 2
  local t=$SECONDS
  echo
  echo "\$ $line"
  "$@" bash -c "$line" > "$LOG/$n.log" 2>&1
  local rc=$?
  say "exit $rc in $(elapsed $t) (log: $LOG/$n.log)"
  return $rc
}
fail_line() {  # fail_line N RC LINE
  tail -n 40 "$LOG/$1.log"
  die "line $1 exited $2: $3"
}

apt_line() {  # apt_line N LINE
  local n=$1 line=$2 pkgs=() missing=() w
  read -ra words <<< "${line%%#*}"
  local after=0
  for w in "${words[@]}"; do
    [ "$after" = 1 ] && [ "${w#-}" = "$w" ] && pkgs+=("$w")
    [ "$w" = install ] && after=1
  done
  for w in "${pkgs[@]}"; do
    dpkg -s "$w" 2> /dev/null | grep -q '^Status: install ok installed' || missing+=("$w")
  done
  if [ "${#missing[@]}" = 0 ] && [ "${IMX500_README_APT:-}" != run ]; then
    echo
    echo "\$ $line"
    for w in "${pkgs[@]}"; do
      say "not run: $w is installed (dpkg -s): $(apt-cache policy "$w" 2> /dev/null | grep -E 'Installed|Candidate' \
        | tr -s ' ' | tr '\n' ' ')(running it could only upgrade this shared machine's Java; IMX500_README_APT=run runs it)"
    done
  else
    local run=$line
    if [ "$(id -u)" = 0 ] && ! command -v sudo > /dev/null; then
      run=${line/#sudo /}
      say "root without sudo: running it without \`sudo\`"
    fi
    local t=$SECONDS
    echo
    echo "\$ $run"
    bash -c "$run" 2>&1 | tee "$LOG/$n.log"
    local rc=${PIPESTATUS[0]}
    say "exit $rc in $(elapsed $t)"
    [ "$rc" = 0 ] || die "line $n exited $rc: $line"
  fi
  local v
  v=$(java -version 2>&1 | head -n 1)
  [[ "$v" =~ \"(1[7-9]|[2-9][0-9])[.\"] ]] || die "Java 17+ is needed by the converter; java -version says: ${v:-nothing}"
  say "java: $v"
}

convert_line() {  # convert_line N LINE
  local n=$1 line=$2 onnx="" out="" prev="" w
  read -ra words <<< "${line%%#*}"
  for w in "${words[@]}"; do
    [[ -z "$onnx" && "$w" == *.onnx ]] && onnx=$w
    [ "$prev" = --out ] && out=$w
    prev=$w
  done
  if [ -z "$onnx" ] || [ -z "$out" ]; then die "the convert line names no MODEL.onnx or no --out: $line"; fi
  local name
  name=$(basename "$onnx" .onnx)
  echo
  say "offline: ${NETNS[*]} (its interfaces: $("${NETNS[@]}" ip -br link 2> /dev/null | awk '{print $1, $2}' \
    | paste -sd,)); inside it:"
  echo "\$ python3.12 -c \"import urllib.request; urllib.request.urlopen('https://pypi.org')\""
  local probe
  probe=$("${NETNS[@]}" python3.12 -c "import urllib.request; urllib.request.urlopen('https://pypi.org', timeout=20)" 2>&1)
  local prc=$?
  [ "$prc" != 0 ] || die "https://pypi.org was reachable inside ${NETNS[*]}: the conversion would not be offline"
  say "exit $prc: $(echo "$probe" | tail -n 1)"
  if [ "${IMX500_README_SMOKE:-0}" = 1 ]; then
    line="$line $SMOKE_ARGS"
    say "smoke mode (IMX500_README_SMOKE=1): '$SMOKE_ARGS' appended"
  fi
  run_line "$n" "$line" "${NETNS[@]}"
  local rc=$?
  grep -E '^(model|metadata|memory|report):|^\{|error:|^[A-Za-z.]*Error: ' "$LOG/$n.log" | cut -c1-400
  local pkg=$out/${name}_imx500.zip
  if [ "$rc" = 8 ] && [ "${IMX500_README_SMOKE:-0}" = 1 ]; then
    pkg=$out/${name}_imx500.rejected.zip
    say "smoke mode: the gate refused on $SMOKE_ARGS (exit 8), which 40 images may do; the files are checked"
    GATE_NOTE=" (smoke mode: the gate refused, exit 8)"
  elif [ "$rc" != 0 ]; then
    fail_line "$n" "$rc" "$line"
  fi
  local f
  for f in "$pkg" "$out/${name}_imx500.json" "$out/${name}_imx500.report.json" "$out/${name}_imx500.report.md"; do
    [ -s "$f" ] || die "the convert line did not write $f"
    say "written: $f ($(stat -c %s "$f") bytes)"
  done
  cp "$out/${name}_imx500.json" "$out/${name}_imx500.report.json" "$out/${name}_imx500.report.md" "$LOG/"
  python3.12 - "$out/${name}_imx500.report.json" << 'EOF' || die "the report is not readable"
import json, sys
r = json.load(open(sys.argv[1]))
ev, gate = r.get("evaluation", {}), r.get("gate", {})
print(f"== report: {ev.get('images')} evaluation images ({ev.get('labelled')} labelled), "
      f"top-1 {ev.get('top1_fp32_pct')} % float -> {ev.get('top1_int8_pct')} % quantized: "
      f"drop {ev.get('top1_drop_pts')} points (limit {gate.get('max_top1_drop_pts')}), "
      f"agreement with float {ev.get('top1_agreement_pct')} %, gate passed: {gate.get('passed')}; "
      f"memory {r['memory']['used']}; {r['source']['calibration_images']} calibration images; "
      f"converter {r.get('wall_time_s')} s")
EOF
}

i=0
for line in "${LINES[@]}"; do
  i=$((i + 1))
  n=$(printf '%02d' $i)
  case "$line" in
    "sudo apt "* | "apt "* | "sudo apt-get "* | "apt-get "*)
      apt_line "$n" "$line" ;;
    *"edge-resnet convert "*)
      convert_line "$n" "$line" ;;
    *)
      before=$(printf '%s\n' .venv*/)
      run_line "$n" "$line" || fail_line "$n" $? "$line"
      for d in .venv*/; do
        if [ -x "$d/bin/python" ] && ! grep -qxF "$d" <<< "$before"; then
          say "made $d: $("$d/bin/python" -V 2>&1), $(du -sh "$d" | cut -f1)"
          venv=$CO/${d%/}
        fi
      done ;;
  esac
done
if [ "$KEEP" = 1 ]; then printf '%s\n%s\n' "$WORK" "${venv:-}" > "$LOG/kept"; fi
echo
say "the README's ${#LINES[@]} lines: all ran in order${GATE_NOTE:-}, in $(elapsed "$T0")"
