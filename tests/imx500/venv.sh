#!/usr/bin/env bash
# The IMX500 (Raspberry Pi AI Camera) quantizing environment, .venv-imx500, made (or reused when
# pyproject.toml and this file are unchanged). It is apart from .venv because Sony's tools pin
# their own versions: edge-mdt[pt]==1.3.0 brings MCT 2.5.1 and imx500-converter[pt] 3.18.2 (MCT
# 2.6.1 with converter 3.19.2 does not resolve: mct-quantizers 1.7 vs 1.6), uni-pytorch needs
# Python >= 3.10, < 3.13, and the converter needs Java 17+ (apt: openjdk-17-jre-headless).
# PyTorch: CPU-only wheels of torch and torchvision when both lie in pip's find-links (PyPI's default
# brings ~4 GB of CUDA libraries the conversion never uses), else PyPI's default. Not torch alone: a
# CPU torch under PyPI's (CUDA) torchvision fails at import ("operator torchvision::nms does not exist").
# Used by tests/imx500/run.sh (the slow path); the default test run never builds it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
DIR=.venv-imx500
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=$(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11*/bin/python | sort -V | tail -n 1)
  [ -x "$PY" ] || PY=$(command -v python3.11 || command -v python3.12 || command -v python3)
fi
key=$(cat pyproject.toml tests/imx500/venv.sh | sha256sum | cut -c1-16)
stamp="$DIR/.edge-resnet-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then exit 0; fi
echo "== preparing $DIR with $("$PY" -V 2>&1)"
rm -rf "$DIR"
"$PY" -m venv "$DIR"
pyver=$("$DIR/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
torch_spec=torch
for d in $("$DIR/bin/pip" config get global.find-links 2>/dev/null) /opt/wheels; do
  t=$(ls "$d"/torch-*+cpu-"$pyver"-*manylinux*x86_64.whl 2>/dev/null | sort -V | tail -n 1 || true)
  v=$(ls "$d"/torchvision-*+cpu-"$pyver"-*manylinux*x86_64.whl 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$t" ] && [ -n "$v" ]; then torch_spec="$t $v"; break; fi
done
echo "== torch from: $torch_spec"
# the project with its [imx500] extra; pip's output goes to a log shown only on failure
"$DIR/bin/pip" install -q $torch_spec -e ".[imx500]" pytest > "$DIR.pip.log" 2>&1 || { tail -n 60 "$DIR.pip.log"; exit 1; }
echo "$key" > "$stamp"
du -sh "$DIR" | sed 's/^/== size: /'
