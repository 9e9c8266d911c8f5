#!/usr/bin/env bash
# The one test command (README and .ci/run): installs what the tests need, then lint, types, tests.
#   bash tests/run.sh [extra pytest args]
# Environments:
#   .venv         workstation: pip install -e ".[convert,dev]"  (onnx2tf, TensorFlow, onnxruntime)
#   .venv-device  device: pip install .  (no extras: numpy 2, newest ai-edge-litert), runtime tests
#   .venv-old     old device: numpy < 2 + tflite-runtime 2.14 (Raspberry Pi OS Bookworm era), runtime tests
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

need_apt=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# venv DIR STAMP_INPUT PIP_ARGS...: create DIR and install, skipped when nothing changed since last time.
venv() {
  local dir=$1 key=$2; shift 2
  local stamp="$dir/.edge-resnet-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then return; fi
  echo "== preparing $dir"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  # pip's output goes to a log shown only on failure (this machine's index prints a warning per package)
  "$dir/bin/pip" install -q "$@" > "$dir.pip.log" 2>&1 || { cat "$dir.pip.log"; return 1; }
  echo "$key" > "$stamp"
}
key=$(cat pyproject.toml tests/run.sh | sha256sum | cut -c1-16)

venv .venv "$key" -e ".[convert,dev]"
venv .venv-device "$key" "$ROOT" pytest hypothesis
venv .venv-old "$key" "numpy<2" "tflite-runtime==2.14.0" "opencv-python-headless<4.12" "paho-mqtt>=2,<3" pytest hypothesis
# the old environment gets our code without its dependency resolution (tflite-runtime instead of ai-edge-litert)
.venv-old/bin/pip install -q --no-deps --force-reinstall "$ROOT" > .venv-old.pip.log 2>&1 || { cat .venv-old.pip.log; exit 1; }

echo "== ruff"
.venv/bin/ruff check edge_resnet convert tests bench
echo "== mypy"
.venv/bin/mypy edge_resnet convert

RUNTIME_TESTS=(tests/test_preprocess.py tests/test_bundle_engine.py tests/test_classify_cli.py tests/test_compat.py)
ARTIFACTS=$(mktemp -d)
trap 'rm -rf "$ARTIFACTS"' EXIT
export EDGE_RESNET_ARTIFACTS=$ARTIFACTS

echo "== pytest (workstation: convert, daemon, sinks, deploy)"
.venv/bin/python -m pytest -p no:cacheprovider "$@"

echo "== pytest (device install: pip install . only, numpy 2)"
.venv-device/bin/python -m pytest -p no:cacheprovider -q "${RUNTIME_TESTS[@]}"

echo "== pytest (old device: tflite-runtime 2.14, numpy < 2)"
# (the 800-image accuracy run is left to the fast runtimes: 2.14 has no XNNPACK for uint8 and takes minutes)
EDGE_RESNET_INTERPRETER=tflite_runtime .venv-old/bin/python -m pytest -p no:cacheprovider -q \
  -k "not evaluation_split" "${RUNTIME_TESTS[@]}"
