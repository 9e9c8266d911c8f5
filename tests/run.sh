#!/usr/bin/env bash
# The one test command (README and .ci/run): installs what the tests need, then lint, types, tests.
#   bash tests/run.sh [extra pytest args]
# Environments: tests/venvs.sh (.venv workstation, .venv-device, .venv-old).
# Then the device lab (tests/lab/run.sh: arm64 Raspberry Pi OS-like systems under qemu, the service
# under systemd as PID 1); always under CI=true, skipped elsewhere with EDGE_RESNET_LAB=0.
set -euo pipefail
cd "$(dirname "$0")/.."
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

bash tests/venvs.sh

echo "== ruff"
.venv/bin/ruff check edge_resnet convert tests bench  # ruff does not follow the link edge_resnet/convert
echo "== mypy"
.venv/bin/mypy edge_resnet tests bench  # convert/ is in it, as edge_resnet.convert (the link edge_resnet/convert)

RUNTIME_TESTS=(-m "runtime and not hw")  # the `runtime` marker (pyproject.toml), not a list of files
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

if [ "${CI:-}" = true ] || [ "${EDGE_RESNET_LAB:-1}" != 0 ]; then
  echo "== device lab (tests/lab/run.sh)"
  bash tests/lab/run.sh
else
  echo "== device lab skipped (EDGE_RESNET_LAB=0)"
fi
