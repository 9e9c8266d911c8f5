#!/usr/bin/env bash
# The test environments, made (or reused, when pyproject.toml and this file are unchanged):
#   .venv         workstation: pip install -e ".[convert,dev]"  (onnx2tf, TensorFlow, onnxruntime)
#   .venv-device  device: pip install .  (no extras: numpy 2, newest ai-edge-litert), runtime tests
#   .venv-old     old device: numpy < 2 + tflite-runtime 2.14 (Raspberry Pi OS Bookworm era), runtime tests
# Used by tests/run.sh and tests/lab/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

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
key=$(cat pyproject.toml tests/venvs.sh | sha256sum | cut -c1-16)

venv .venv "$key" -e ".[convert,dev]"
venv .venv-device "$key" "$ROOT" pytest hypothesis
venv .venv-old "$key" "numpy<2" "tflite-runtime==2.14.0" "opencv-python-headless<4.12" "paho-mqtt>=2,<3" "cryptography>=41" pytest hypothesis
# the device environments get this checkout's code (the old one without dependency resolution:
# tflite-runtime instead of ai-edge-litert). setuptools packs whatever an earlier build left in
# build/lib (a module since moved or deleted would ship again), so each install starts without it.
rm -rf "$ROOT/build"
.venv-device/bin/pip install -q --no-deps --force-reinstall "$ROOT" > .venv-device.pip.log 2>&1 || { cat .venv-device.pip.log; exit 1; }
.venv-old/bin/pip install -q --no-deps --force-reinstall "$ROOT" > .venv-old.pip.log 2>&1 || { cat .venv-old.pip.log; exit 1; }

# .venv-ha: Home Assistant (2025.1.4, pinned) for tests/test_ha_discovery.py, which runs HA's own MQTT
# discovery schemas on our payloads (tests/helpers/ha_schema.py). HA needs Python >= 3.12: pyenv's
# newest 3.12 if present, else python3.12 / python3.13 on PATH; none: the tests skip (fail under CI=true).
HA_PIN="homeassistant==2025.1.4"
HA_PY=$(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python | sort -V | tail -n 1)
[ -x "$HA_PY" ] || HA_PY=$(command -v python3.12 || command -v python3.13 || true)
if [ -n "$HA_PY" ]; then
  PY=$HA_PY venv .venv-ha "$HA_PIN $("$HA_PY" -V 2>&1)" "$HA_PIN"
else
  echo "== no Python 3.12+ for .venv-ha: the Home Assistant discovery tests will skip (fail under CI=true)"
fi
