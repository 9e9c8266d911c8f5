"""`--edgetpu`: pre-flight op check, then `edgetpu_compiler` with its op mapping in the report.

The compiler only exists for x86-64 Linux, so it is optional: without it we still list the ops the
Edge TPU cannot run (from Coral's published op table) and say how to install it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from edge_resnet.bundle import read_model, write_bundle
from edge_resnet.errors import DependencyError

from . import tflite_io

COMPILER = "edgetpu_compiler"
INSTALL_STEPS = (
    "edgetpu_compiler not found; it runs on x86-64 Debian/Ubuntu: "
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo gpg --dearmor -o /usr/share/keyrings/coral.gpg; "
    'echo "deb [signed-by=/usr/share/keyrings/coral.gpg] '
    'https://packages.cloud.google.com/apt coral-edgetpu-stable main" '
    "| sudo tee /etc/apt/sources.list.d/coral-edgetpu.list; sudo apt-get update; sudo apt-get install edgetpu-compiler"
)
# Coral "TensorFlow models on the Edge TPU", supported operations (compiler 16).
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXP", "FULLY_CONNECTED",
    "GATHER", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM", "MUL",
    "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM",
    "SQUARE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
_INT_TYPES = {2, 3, 9}  # TensorType INT32 (biases), UINT8, INT8
# Operator versions TensorFlow 2.19's converter writes for these ops in a full-int8 model (int8 tensors,
# per-channel weights; QUANTIZE for the uint8 -> int8 input), the versions the Edge TPU compiler has
# accepted from our TensorFlow path. Version 1 of CONV_2D means float: a model that keeps it is refused.
# The TensorFlow-free path writes these too (backend_litert.set_op_versions); the pre-flight checks them.
INT8_OP_VERSIONS = {
    "ADD": 2, "SUB": 2, "MUL": 2, "AVERAGE_POOL_2D": 2, "MAX_POOL_2D": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4, "MEAN": 2, "PAD": 2, "SPACE_TO_DEPTH": 2, "QUANTIZE": 1, "RESHAPE": 1, "SOFTMAX": 2,
    "CONCATENATION": 2,
}


def preflight(flatbuffer: bytes) -> dict[str, Any]:
    """Ops (and float tensors) the Edge TPU cannot take; the compiler would leave them on the CPU."""
    m = tflite_io.read(flatbuffer)
    names = tflite_io.opcode_names(m)
    counts = Counter(names[op.opcodeIndex] for sg in m.subgraphs for op in sg.operators)
    unsupported = sorted(op for op in counts if op not in EDGETPU_OPS)
    float_tensors = sum(1 for sg in m.subgraphs for t in sg.tensors if t.type not in _INT_TYPES)
    versions = {names[i]: int(c.version) for i, c in enumerate(m.operatorCodes)}
    wrong_versions = {
        op: f"version {v}, int8 models have {INT8_OP_VERSIONS[op]}"
        for op, v in sorted(versions.items())
        if op in counts and op in INT8_OP_VERSIONS and v != INT8_OP_VERSIONS[op]
    }
    return {
        "ops": dict(sorted(counts.items())),
        "op_versions": dict(sorted(versions.items())),
        "unsupported_ops": unsupported,
        "wrong_op_versions": wrong_versions,
        "float_tensors": float_tensors,
        "ok": not unsupported and float_tensors == 0 and not wrong_versions,
    }


def parse_compiler_log(text: str) -> dict[str, Any]:
    """The numbers and per-op table `edgetpu_compiler -s` prints."""
    out: dict[str, Any] = {}
    patterns = {
        "ops_on_tpu": r"Number of operations that will run on Edge TPU:\s*(\d+)",
        "ops_on_cpu": r"Number of operations that will run on CPU:\s*(\d+)",
        "total_ops": r"Total number of operations:\s*(\d+)",
        "subgraphs": r"Number of Edge TPU subgraphs:\s*(\d+)",
    }
    for key, pat in patterns.items():
        m = re.search(pat, text)
        if m:
            out[key] = int(m.group(1))
    for key, pat in {
        "on_chip_mib": r"On-chip memory used for caching model parameters:\s*([\d.]+)\s*(\w+)",
        "off_chip_mib": r"Off-chip memory used for streaming uncached model parameters:\s*([\d.]+)\s*(\w+)",
    }.items():
        m = re.search(pat, text)
        if m:
            out[key] = round(_to_mib(float(m.group(1)), m.group(2)), 3)
    if "ops_on_tpu" not in out and "total_ops" in out and "Model compiled successfully" in text:
        out["ops_on_tpu"], out["ops_on_cpu"] = out["total_ops"], 0
    table: list[dict[str, Any]] = []
    in_table = False
    for line in text.splitlines():
        if line.strip().startswith("Operator") and "Status" in line:
            in_table = True
            continue
        row = re.match(r"^\s*([A-Z][A-Z0-9_]+)\s+(\d+)\s+(.+?)\s*$", line) if in_table else None
        if row:
            table.append({"op": row.group(1), "count": int(row.group(2)), "status": row.group(3)})
    out["op_mapping"] = table
    return out


def _to_mib(value: float, unit: str) -> float:
    return value * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}.get(unit, 1.0)


def compile_report(bundle: Path, flatbuffer: bytes, timeout_s: float = 600) -> dict[str, Any]:
    """Pre-flight, then compile to `<bundle stem>_edgetpu.tflite` (same metadata) when the compiler exists."""
    report: dict[str, Any] = {"preflight": preflight(flatbuffer)}
    exe = shutil.which(COMPILER)
    if exe is None:
        report["compiled"] = False
        report["message"] = INSTALL_STEPS
        return report
    with tempfile.TemporaryDirectory(prefix="edge-resnet-edgetpu-") as tmp:
        plain = Path(tmp) / bundle.name
        plain.write_bytes(flatbuffer)  # the compiler wants the bare flatbuffer, not our appended ZIP
        proc = subprocess.run(
            [exe, "-s", "-o", tmp, str(plain)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        log = proc.stdout + proc.stderr
        report.update(parse_compiler_log(log))
        report["compiler_exit_code"] = proc.returncode
        compiled = Path(tmp) / f"{plain.stem}_edgetpu.tflite"
        report["compiled"] = proc.returncode == 0 and compiled.is_file()
        if report["compiled"]:
            meta = read_model(bundle).meta
            assert meta is not None
            meta.source = {**meta.source, "edgetpu_compiler": log.splitlines()[0] if log else ""}
            out = write_bundle(compiled.read_bytes(), meta, bundle.with_name(f"{bundle.stem}_edgetpu.tflite"))
            report["model"] = out.name
        else:
            report["message"] = log.strip().splitlines()[-1] if log.strip() else "edgetpu_compiler failed"
    return report


def require_compiled(report: dict[str, Any]) -> None:
    """After the CPU model and report are written: fail if the Edge TPU model could not be made."""
    if report.get("compiled"):
        return
    msg = report.get("message", "edgetpu_compiler failed")
    raise DependencyError(msg if msg == INSTALL_STEPS else f"edgetpu_compiler failed: {msg}")
