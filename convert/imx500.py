"""ONNX classifier -> a network for the Raspberry Pi AI Camera (Sony IMX500): `<name>_imx500.zip`.

The flow (issue 25): ONNX -> PyTorch (onnx2torch) -> Sony's Model Compression Toolkit (MCT)
post-training quantization for the IMX500 (mixed precision only when 8 bits do not fit, with a
weights budget from convert/imx500_memory.py and, if the converter still says "not enough memory",
from the converter's own figure) -> MCT's ONNX -> `imxconv-pt` (Sony, Java 17+) -> packerOut.zip,
kept as `<name>_imx500.zip` beside a report and our metadata (`<name>_imx500.json`: labels,
preprocessing, the digests) that the device's `picamera2` source mode reads. On the Pi,
`imx500-package` turns the zip into the `network.rpk` the sensor loads.

Accuracy is measured before anything is written under a deployable name: MCT's quantized model
runs in PyTorch on the evaluation images against the float ONNX (onnxruntime) on the very same
input tensors, with the TFLite path's gate (exit 8, the zip kept as `<name>_imx500.rejected.zip`).

The memory check needs only `onnx` (no torch, no MCT), so a network that cannot fit fails in one
line within a second, in any environment with the convert extra; the rest imports the `[imx500]`
extra lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx.numpy_helper
import onnx.version_converter

from edge_resnet.classify import read_labels, resolve_labels
from edge_resnet.errors import DependencyError, InputError, ModelError
from edge_resnet.preprocess import PreprocessSpec, TensorInfo, prepare

from . import calibration, imx500_input, onnx_model, verify
from .calibration import Split
from .imx500_memory import (
    ConverterMemory,
    MemoryPlan,
    NetworkSizes,
    budget_after_report,
    fits_line,
    parse_converter_memory,
    plan,
)
from .offline import offline
from .progress import Progress

log = logging.getLogger(__name__)

FORMAT = "edge-resnet-imx500"
METADATA_VERSION = 2  # 2: the network takes the sensor's pixels (imx500_input); 1 took normalised input
CONVERTER = "imxconv-pt"
JAVA_FIX = "install Java 17 or newer: sudo apt install openjdk-17-jre-headless"
EXTRA_FIX = 'install the imx500 extra on Python 3.10-3.12: pip install "edge-resnet[imx500]"'
MAX_BUDGET_TRIES = 3
EVAL_BATCH = 32


@dataclass
class Imx500Job:
    """What `edge-resnet convert --target imx500` needs; defaults as the CLI documents."""

    onnx: Path
    calib: Path
    out: Path
    preprocess: PreprocessSpec
    labels: Path | None = None
    label_offset: int | None = None
    calib_count: int = 200
    calib_split: Split = "auto"
    eval_dir: Path | None = None
    eval_split: Split = "auto"
    eval_limit: int = 1000
    max_top1_drop: float | None = 1.0
    min_agreement: float | None = verify.DEFAULT_MIN_AGREEMENT
    no_eval: bool = False
    seed: int = 0
    keep_workdir: bool = False
    range_method: str = "auto"  # activations: mse, minmax (MCT's no-clipping) or auto (activation_ranges)
    converter: str = CONVERTER  # the imxconv-pt command (a path, for a venv not on PATH)


@dataclass
class Imx500Result:
    package: Path  # <name>_imx500.zip (the converter's packerOut.zip)
    metadata: Path  # <name>_imx500.json
    report_json: Path
    report_md: Path
    report: dict[str, Any] = field(default_factory=dict)
    verified: bool = False


# -- the fast part: sizes and fit, from the ONNX graph alone -------------------------------------


def network_sizes(model: onnx.ModelProto, name: str) -> NetworkSizes:
    """Parameters (float initializers) and the largest activation at batch 1, by ONNX shape inference."""
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                 if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
                 and len(t.dims) >= 1)  # fmt: skip
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # a graph shape inference cannot read: estimate from the weights alone
        log.warning("IMX500 memory estimate without activations (shape inference failed: %s)", e)
        inferred = model
    inits = {t.name for t in model.graph.initializer}
    largest = 0
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        if dims:
            largest = max(largest, int(np.prod(dims)))
    return NetworkSizes(name, params, largest)


def check_fits(path: Path) -> MemoryPlan:
    """The memory plan for an ONNX file, or DoesNotFit in one line; reads the graph, runs nothing."""
    model, _info = onnx_model.load_classifier(path)
    return plan(network_sizes(model, path.name))


def check_java() -> str:
    """The Java version line `imxconv-pt` will use; DependencyError naming the apt package otherwise."""
    try:
        r = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        raise DependencyError(f"the IMX500 converter needs Java, and `java` is not on PATH; {JAVA_FIX}") from None
    text = (r.stderr or r.stdout).strip()
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0_292" is Java 8
        major = int(m.group(2))
    if major < 17:
        first = text.splitlines()[0] if text else "no version printed"
        raise DependencyError(f"the IMX500 converter needs Java 17+, found {first!r}; {JAVA_FIX}")
    return text.splitlines()[0]


def find_converter(command: str) -> str:
    found = shutil.which(command)
    if found is None:
        beside = Path(__import__("sys").executable).with_name(command)  # the venv's own bin, not on PATH
        if beside.exists():
            return str(beside)
        raise DependencyError(f"{command} (Sony's IMX500 converter) is not installed; {EXTRA_FIX}")
    return found


# -- ONNX -> PyTorch -> MCT ------------------------------------------------------------------------


def inline_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy ready for onnx2torch: Identity nodes removed (their users read the Identity's input; a folded
    torchvision export whose BatchNorm biases share one Identity otherwise breaks onnx2torch with a KeyError
    on the bias), and Reshapes free in the batch dimension."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    outputs = {o.name for o in g.output}
    alias: dict[str, str] = {}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.output[0] not in outputs:
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])
        else:
            keep.append(n)
    for n in keep:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del g.node[:]
    g.node.extend(keep)
    _free_batch_in_reshapes(g)
    _short_names(g)
    return m


def _short_names(g: onnx.GraphProto) -> None:
    """Nodes and inner tensors renamed `n12_Conv` / `t34`: the names become PyTorch module names and then
    the converter's node ids, which it refuses beyond 250 characters (a TFLite-derived MobileNet v2 has
    names of 300+)."""
    keep = {v.name for v in [*g.input, *g.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for t in g.initializer:
        t.name = short(t.name)
    for i, n in enumerate(g.node):
        n.name = f"n{i}_{n.op_type}"
        for j, name in enumerate(n.input):
            n.input[j] = short(name)
        for j, name in enumerate(n.output):
            n.output[j] = short(name)
    del g.value_info[:]


def _free_batch_in_reshapes(g: onnx.GraphProto) -> None:
    """A Reshape to a constant shape starting with batch 1 (`[1, 1001]`, common in exports from TFLite)
    gets -1 there, so calibration and evaluation can run batches."""
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        shape = onnx.numpy_helper.to_array(inits[n.input[1]]).astype(np.int64)
        if shape.ndim == 1 and shape.size >= 2 and shape[0] == 1 and -1 not in shape:
            shape[0] = -1
            name = f"{n.input[1]}_any_batch"
            g.initializer.append(onnx.numpy_helper.from_array(shape, name))
            n.input[1] = name


def _import_extra() -> tuple[Any, Any, Any]:
    try:  # by name: the [imx500] extra is not in the workstation venv that type-checks this
        torch = importlib.import_module("torch")
        mct = importlib.import_module("model_compression_toolkit")
        onnx2torch = importlib.import_module("onnx2torch")
    except ImportError as e:
        raise DependencyError(f"IMX500 conversion needs {e.name or 'torch and MCT'}; {EXTRA_FIX}") from None
    return torch, mct, onnx2torch


MIN_TORCH_OPSET = 13  # onnx2torch has no converters for older ops (the model zoo's ResNets are opset 7)


def upgraded(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset 13 or later, as onnx2torch needs it (onnx's own version converter)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_TORCH_OPSET)
    if opset >= MIN_TORCH_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_TORCH_OPSET)
    except Exception as e:
        raise ModelError(f"the ONNX model's opset {opset} cannot be upgraded to {MIN_TORCH_OPSET} for PyTorch "
                         f"({type(e).__name__}: {e}); export it again with opset 13-17") from None


def to_torch(model: onnx.ModelProto) -> Any:
    torch, _mct, onnx2torch = _import_extra()
    try:
        net = onnx2torch.convert(inline_identities(upgraded(model)))
    except Exception as e:
        raise ModelError(f"onnx2torch cannot read this ONNX model ({type(e).__name__}: {e}); export it from "
                         "PyTorch with opset 13-17") from None
    net.eval()
    torch.set_grad_enabled(False)
    return net


def activation_ranges(method: str, op_types: frozenset[str]) -> str:
    """`minmax` or `mse` for MCT's activation thresholds. auto: min/max (no clipping) when the network bounds
    its activations itself (Clip, i.e. ReLU6), where MSE's clipping only cuts a range training chose (MobileNet
    v2, 800 images, 200 calibration images: top-1 drop 0.87 points with min/max, 1.12 with MSE); MSE for
    unbounded ReLUs (ResNets), whose rare large values would otherwise take the resolution of every common one."""
    if method in ("mse", "minmax"):
        return method
    return "minmax" if "Clip" in op_types else "mse"


def quantize(net: Any, calib: npt.NDArray[np.float32], budget: int | None,
             ranges: str = "mse") -> tuple[Any, dict[str, Any]]:
    """MCT post-training quantization for the IMX500; mixed precision with `budget` bytes of weights."""
    torch, mct, _ = _import_extra()
    batches = [torch.from_numpy(calib[i : i + 16]) for i in range(0, len(calib), 16)]

    def representative() -> Iterator[list[Any]]:
        for b in batches:
            yield [b]

    tpc = mct.get_target_platform_capabilities("pytorch", "imx500")
    errors = mct.core.QuantizationErrorMethod
    qc = mct.core.QuantizationConfig(activation_error_method=errors.NOCLIPPING if ranges == "minmax" else errors.MSE)
    kwargs: dict[str, Any] = {"target_platform_capabilities": tpc, "core_config": mct.core.CoreConfig(qc)}
    if budget is not None:
        kwargs["target_resource_utilization"] = mct.core.ResourceUtilization(weights_memory=budget)
        kwargs["core_config"] = mct.core.CoreConfig(qc, mixed_precision_config=(
            mct.core.MixedPrecisionQuantizationConfig(num_of_images=min(32, len(calib)))))
    t0 = time.perf_counter()
    try:
        qnet, _info = mct.ptq.pytorch_post_training_quantization(net, representative, **kwargs)
    except Exception as e:  # MCT's own errors and those of the packages it calls (a PuLP 4 TypeError)
        log.debug("MCT's traceback", exc_info=True)  # shown with -v
        where = "mixed precision search" if budget is not None else "quantization"
        raise ModelError(f"Sony's Model Compression Toolkit failed in its {where} ({type(e).__name__}: "
                         f"{str(e)[:200]}); {EXTRA_FIX} in a fresh venv (the extra pins the versions that "
                         "work together), and run with -v for the traceback") from e
    qnet.eval()
    bits = weight_bits(qnet)
    details = {
        "tool": f"model-compression-toolkit {mct.__version__}",
        "calibration_images": len(calib),
        "activation_ranges": ranges,
        "mixed_precision": budget is not None,
        "weights_budget_bytes": budget,
        "weight_bits_layers": {str(k): v for k, v in sorted(bits.items())},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("MCT quantization: %s in %.0f s", _bits_text(bits), details["seconds"])
    return qnet, details


def weight_bits(qnet: Any) -> dict[int, int]:
    """Bit width -> number of layers whose weights MCT quantized at it."""
    out: dict[int, int] = {}
    for mod in qnet.modules():
        quantizers = getattr(mod, "weights_quantizers", None)
        if not isinstance(quantizers, dict):
            continue
        for q in quantizers.values():
            n = getattr(q, "num_bits", None)
            if isinstance(n, int):
                out[n] = out.get(n, 0) + 1
    return out


def _bits_text(bits: dict[int, int]) -> str:
    return ", ".join(f"{n} layers at {b} bits" for b, n in sorted(bits.items(), reverse=True)) or "no weight layers"


@contextlib.contextmanager
def _legacy_onnx_export(torch: Any) -> Iterator[None]:
    """MCT calls torch.onnx.export without `dynamo`; torch 2.9+ defaults to the dynamo exporter, which
    needs onnxscript (not a dependency): ask for the TorchScript exporter for the duration."""
    orig = torch.onnx.export

    def export(*a: Any, **k: Any) -> Any:
        k.setdefault("dynamo", False)
        return orig(*a, **k)

    torch.onnx.export = export
    try:
        yield
    finally:
        torch.onnx.export = orig


def export_onnx(qnet: Any, calib: npt.NDArray[np.float32], path: Path) -> None:
    torch, mct, _ = _import_extra()
    sample = torch.from_numpy(calib[:1])

    def representative() -> Iterator[list[Any]]:
        yield [sample]

    with _legacy_onnx_export(torch):
        mct.exporter.pytorch_export_model(qnet, save_model_path=str(path), repr_dataset=representative)


def run_converter(command: str, model: Path, outdir: Path) -> tuple[ConverterMemory, str, Path | None]:
    """imxconv-pt on MCT's ONNX: its memory figures, its output, and packerOut.zip when it wrote one."""
    cmd = [command, "-i", str(model), "-o", str(outdir), "--overwrite-output", "--report-size-unit", "B"]
    log.info("IMX500 converter: %s -i %s", command, model.name)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    text = (r.stdout or "") + (r.stderr or "")
    reports = sorted(outdir.rglob("*MemoryReport.json"))
    try:
        parsed = json.loads(reports[0].read_text()) if reports else None
    except (OSError, ValueError):
        parsed = None
    mem = parse_converter_memory(parsed, text)
    zips = sorted(outdir.rglob("packerOut.zip"))
    if r.returncode != 0 and mem.fits:
        tail = " | ".join(text.strip().splitlines()[-3:])[:400]
        raise ModelError(f"{Path(command).name} failed (exit {r.returncode}): {tail}")
    return mem, text, zips[0] if zips and r.returncode == 0 else None


# -- evaluation: MCT's model in PyTorch vs the float ONNX ------------------------------------------


def evaluate(qnet: Any, ref: verify.OnnxReference, items: list[calibration.Item], offset: int,
             spec: PreprocessSpec, tensor: TensorInfo, gate: verify.Gate) -> dict[str, Any]:
    """top-1/top-5 (with ground truth), agreement with FP32 and the gate's verdict. The float ONNX gets the
    preprocessed tensor, MCT's network the pixels the sensor would write (imx500_input)."""
    torch, _, _ = _import_extra()
    n = agree = labelled = 0
    top1 = {"fp32": 0, "int8": 0}
    top5 = {"fp32": 0, "int8": 0}
    skipped = 0
    noise = signal = 0.0
    batch: list[tuple[calibration.Item, npt.NDArray[np.float32], npt.NDArray[np.float64]]] = []

    def flush() -> None:
        nonlocal n, agree, labelled, noise, signal
        if not batch:
            return
        x = torch.from_numpy(np.concatenate([b[1] for b in batch]))
        q = np.asarray(qnet(x).detach().numpy(), np.float64).reshape(len(batch), -1)
        for (it, _x, r), qi in zip(batch, q, strict=True):
            signal += float(np.sum(r**2))
            noise += float(np.sum((r - qi) ** 2))
            ref5 = [int(i) for i in np.argsort(-r[offset:], kind="stable")[:5]]
            q5 = [int(i) for i in np.argsort(-qi[offset:], kind="stable")[:5]]
            agree += ref5[0] == q5[0]
            n += 1
            if it.class_index is not None:
                labelled += 1
                top1["fp32"] += ref5[0] == it.class_index
                top1["int8"] += q5[0] == it.class_index
                top5["fp32"] += it.class_index in ref5
                top5["int8"] += it.class_index in q5
        batch.clear()

    with Progress("evaluating (FP32 ONNX vs MCT)", len(items)) as bar:
        for it in items:
            bar.update()
            frame = calibration.read_image(it.path)
            if frame is None:
                skipped += 1
                continue
            x = prepare(frame, spec, tensor).astype(np.float32)  # the float ONNX: our preprocessing
            r = np.asarray(ref.session.run(None, {ref.name: x})[0], np.float64).reshape(-1)
            batch.append((it, imx500_input.sensor_input_of(frame, spec, tensor.hw), r))  # MCT's: the sensor's
            if len(batch) == EVAL_BATCH:
                flush()
        flush()
    if n == 0:
        raise InputError(f"none of the {len(items)} evaluation images is readable; pass --eval with JPEG/PNG photos")
    ev: dict[str, Any] = {"images": n, "unreadable_skipped": skipped, "labelled": labelled,
                          "top1_agreement_pct": round(100.0 * agree / n, 2), "quantized_model": "MCT (PyTorch)",
                          "logit_sqnr_db": round(10.0 * float(np.log10(signal / noise)), 2) if noise else float("inf")}
    if labelled:
        ev.update({
            "top1_fp32_pct": round(100.0 * top1["fp32"] / labelled, 2),
            "top1_int8_pct": round(100.0 * top1["int8"] / labelled, 2),
            "top5_fp32_pct": round(100.0 * top5["fp32"] / labelled, 2),
            "top5_int8_pct": round(100.0 * top5["int8"] / labelled, 2),
        })
        ev["top1_drop_pts"] = round(ev["top1_fp32_pct"] - ev["top1_int8_pct"], 2)
    return {"evaluation": ev, "gate": gate.judge(ev)}


# -- the job ---------------------------------------------------------------------------------------


def report_markdown(d: dict[str, Any]) -> str:
    """The report for people: the network, the sensor memory, the quantization and the accuracy."""
    m, q, ev, gate = d["memory"], d["quantization"], d.get("evaluation", {}), d.get("gate", {})
    bits = ", ".join(f"{n} layers at {b} bits" for b, n in sorted(q["weight_bits_layers"].items(), reverse=True))
    mixed = f", mixed precision within {q['weights_budget_bytes']:,} bytes of weights" if q["mixed_precision"] else ""
    lines = [
        f"# IMX500 conversion report: {d['source']['onnx']}", "",
        f"- network: `{d['model']}` ({d['sizes_bytes']['imx500_zip'] / 1e6:.2f} MB) for `imx500-package` on the Pi; "
        f"metadata for the device: `{d['metadata']}`",
        f"- sensor memory (the converter's report): {m['used']}; estimate before quantizing "
        f"{m['estimate_8bit_bytes']:,} bytes at 8 bits",
        f"- quantization: {q['tool']}, {q['calibration_images']} calibration images, weights {bits}{mixed}, "
        f"activation ranges {q.get('activation_ranges', 'mse')}",
        f"- input: {d['input']['sensor_writes']}; normalisation {d['input']['normalisation']}",
    ]
    if "images" in ev:
        lines += ["", f"Evaluation on {ev['images']} images ({ev['labelled']} with ground truth):", "",
                  "| metric | FP32 ONNX | quantized (MCT, PyTorch) |", "| --- | --- | --- |"]
        if ev.get("labelled"):
            lines += [f"| top-1 % | {ev['top1_fp32_pct']} | {ev['top1_int8_pct']} |",
                      f"| top-5 % | {ev['top5_fp32_pct']} | {ev['top5_int8_pct']} |"]
        lines += [f"| top-1 agreement with FP32 % | | {ev['top1_agreement_pct']} |",
                  f"| output SQNR vs FP32 (dB) | | {ev['logit_sqnr_db']} |"]
    verdict = "passed" if gate.get("passed") else ("not measured" if "passed" not in gate else "FAILED")
    if "top1_drop_pts" in gate and "max_top1_drop_pts" in gate:
        verdict = f"{gate['top1_drop_pts']:.2f} points, limit {gate['max_top1_drop_pts']:.2f}: {verdict}"
    elif "min_agreement_pct" in gate:
        verdict = f"{gate['top1_agreement_pct']:.2f} %, minimum {gate['min_agreement_pct']:.2f} %: {verdict}"
    lines += ["", f"- gate: {gate.get('rule', '?')}: {verdict}", f"- wall time: {d.get('wall_time_s', '?')} s", ""]
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("model-compression-toolkit", "imx500-converter", "edge-mdt", "onnx2torch", "torch", "onnx"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(job: Imx500Job, on_stage: Callable[[str], None] | None = None) -> Imx500Result:
    """Fit check, quantize (mixed precision when needed), evaluate, export, convert, write."""
    t_start = time.perf_counter()
    say = on_stage or (lambda s: log.info("%s", s))
    model, info = onnx_model.load_classifier(job.onnx)
    memory = plan(network_sizes(model, job.onnx.name))  # DoesNotFit: one line, before anything slow
    say(f"memory estimate: {memory.needed_8bit:,} bytes at 8 bits of {memory.capacity:,}"
        + (f"; mixed precision with a weights budget of {memory.weights_budget:,} bytes" if memory.mixed_precision
           else ""))
    java = check_java()
    converter = find_converter(job.converter)
    labels = read_labels(job.labels) if job.labels else None
    labels_by_slot, offset = resolve_labels(labels, info.num_classes, job.label_offset, str(job.labels))
    from .pipeline import ConvertJob, plan_or_no_eval, require_evaluation

    eval_plan = plan_or_no_eval(ConvertJob(  # the TFLite path's split rules, unchanged
        onnx=job.onnx, calib=job.calib, out=job.out, preprocess=job.preprocess, calib_count=job.calib_count,
        calib_split=job.calib_split, eval_dir=job.eval_dir, eval_split=job.eval_split, eval_limit=job.eval_limit,
        no_eval=job.no_eval, seed=job.seed))
    loaded = calibration.load(eval_plan.calib_pool, job.calib_count, info.hw, job.preprocess, seed=job.seed)
    require_evaluation(ConvertJob(onnx=job.onnx, calib=job.calib, out=job.out, preprocess=job.preprocess,
                                  no_eval=job.no_eval), eval_plan)
    calib = imx500_input.sensor_pixels(loaded.images, job.preprocess)
    say(f"calibration: {len(calib)} images; evaluation: {eval_plan.note}")

    net = imx500_input.with_sensor_input(to_torch(model), job.preprocess)  # takes what the sensor writes
    work = Path(tempfile.mkdtemp(prefix="edge-resnet-imx500-"))
    stem = job.onnx.stem
    budget = memory.weights_budget
    attempts: list[dict[str, Any]] = []
    guard = contextlib.ExitStack()
    guard.enter_context(offline())  # MCT, the export and the evaluation never reach the network
    try:
        for attempt in range(1, MAX_BUDGET_TRIES + 1):
            qnet, qdetails = quantize(net, calib, budget, activation_ranges(job.range_method, info.op_types))
            say(f"quantized: {_bits_text(weight_bits(qnet))}")
            qonnx = work / f"{stem}_mct.onnx"
            export_onnx(qnet, calib, qonnx)
            outdir = work / f"conv{attempt}"
            outdir.mkdir()
            mem, text, packer = run_converter(converter, qonnx, outdir)
            attempts.append({**qdetails, "converter_fits": mem.fits, "converter_used_bytes": mem.used_bytes})
            if mem.fits and packer is not None:
                break
            budget = budget_after_report(budget, memory.sizes, mem, memory.capacity)
            say(f"the converter reports not enough memory ({mem.used_bytes or '?'} bytes); "
                f"quantizing again with a weights budget of {budget:,} bytes")
        else:
            raise ModelError(f"{job.onnx.name} still does not fit the IMX500 after {MAX_BUDGET_TRIES} weight budgets "
                             f"(last: {budget:,} bytes); convert a smaller network (ResNet-18, MobileNet v2)")
        used = mem.used_bytes
        sensor_in = imx500_input.read_input_tensor(packer)
        imx500_input.check_input_tensor(sensor_in, job.onnx.name)
        say(f"input: {sensor_in.describe()} (the sensor's pixels; normalisation inside the network)")
        if eval_plan.items:
            ref = verify.OnnxReference(job.onnx, info, job.preprocess)
            tensor = TensorInfo(info.input_name, info.input_shape, np.dtype(np.float32))
            evaluation = evaluate(qnet, ref, eval_plan.items, offset, job.preprocess, tensor,
                                  verify.Gate(job.max_top1_drop, job.min_agreement))
        else:
            evaluation = {"gate": verify.unverified_gate("no evaluation set; --no-eval")}
        passed = bool(evaluation["gate"].get("passed"))
        job.out.mkdir(parents=True, exist_ok=True)
        final = job.out / f"{stem}_imx500.zip"
        target = final if passed else job.out / (f"{stem}_imx500.rejected.zip" if eval_plan.items
                                                 else f"{stem}_imx500.unverified.zip")
        shutil.copyfile(packer, target)
        meta = {
            "format": FORMAT, "version": METADATA_VERSION,
            "labels": labels_by_slot if labels is not None else [],
            "label_offset": offset, "output_kind": "logits",
            "num_outputs": info.num_classes,
            "preprocess": job.preprocess.to_dict(),
            "input": {"shape": list(info.input_shape), "layout": info.layout},
            "input_normalisation": imx500_input.metadata(sensor_in, job.preprocess),
            "package": target.name, "package_sha256": _sha256(target),
            "onnx": job.onnx.name, "onnx_sha256": info.sha256,
        }
        meta_path = job.out / f"{stem}_imx500.json"
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        report = verify.Report({
            "model": target.name, "target": "imx500", "metadata": meta_path.name,
            "input": imx500_input.metadata(sensor_in, job.preprocess),
            "memory": {**memory.summary(), "converter_used_bytes": used,
                       "used": fits_line(used, memory.capacity) if used else "not reported by the converter"},
            "quantization": attempts[-1], "attempts": attempts,
            "source": {"onnx": job.onnx.name, "onnx_sha256": info.sha256, "converters": _versions(), "java": java,
                       "calibration_images": len(calib), "evaluation_set": eval_plan.note},
            "sizes_bytes": {"onnx": job.onnx.stat().st_size, "imx500_zip": target.stat().st_size},
            **evaluation,
        })
        report.data["wall_time_s"] = round(time.perf_counter() - t_start, 1)
        json_path, md_path = job.out / f"{stem}_imx500.report.json", job.out / f"{stem}_imx500.report.md"
        json_path.write_text(json.dumps(report.data, indent=2, sort_keys=True) + "\n")
        md_path.write_text(report_markdown(report.data))
        (work / "converter.log").write_text(text)
        if eval_plan.items and not passed:
            verify.check(report, target, md_path)
        return Imx500Result(target, meta_path, json_path, md_path, report.data, verified=passed)
    finally:
        guard.close()
        if job.keep_workdir:
            log.info("IMX500 working folder kept at %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
