"""The convert job as one importable function: ONNX + images in, verified INT8 bundle + report out."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_resnet.bundle import BundleMeta, OutputKind, write_bundle
from edge_resnet.classify import read_labels, resolve_labels
from edge_resnet.errors import InputError
from edge_resnet.preprocess import PreprocessSpec

from . import calibration, edgetpu, onnx_model, verify
from .calibration import Split
from .quantize import RangeMethod, quantize
from .stem import rewrite as rewrite_stem

log = logging.getLogger(__name__)

DEFAULT_CALIB_COUNT = 200
DEFAULT_EVAL_LIMIT = 1000


@dataclass
class ConvertJob:
    """Everything `edge-resnet convert` needs; defaults are the ones the CLI documents."""

    onnx: Path
    calib: Path
    out: Path
    preprocess: PreprocessSpec
    labels: Path | None = None
    label_offset: int | None = None
    output_kind: OutputKind | None = None
    calib_count: int = DEFAULT_CALIB_COUNT
    calib_split: Split = "auto"
    eval_dir: Path | None = None
    eval_split: Split = "auto"
    eval_limit: int = DEFAULT_EVAL_LIMIT
    max_top1_drop: float | None = 1.0
    range_method: RangeMethod = "auto"
    bias_correction: bool = True
    stem_rewrite: bool = True  # space-to-depth stem (convert/stem.py); off to compare
    edgetpu: bool = False
    seed: int = 0
    keep_workdir: bool = False
    extra_source: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConvertResult:
    bundle: Path
    float_model: Path
    report_json: Path
    report_md: Path
    report: dict[str, Any]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("onnx2tf", "tensorflow", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def folded_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """What the converted model's input expects: pixels as they are, geometry and order unchanged."""
    return PreprocessSpec(
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        spec.channel_order,
        spec.crop_fraction,
        spec.interpolation,
        preset=f"{spec.preset}-folded",
    )


def _guess_output_kind(model: Any) -> OutputKind:
    last = model.graph.node[-1].op_type if model.graph.node else ""
    return "probabilities" if last == "Softmax" else "logits"


def run(job: ConvertJob) -> ConvertResult:
    """Convert, bundle, verify; writes the report before the fidelity gate can fail the job."""
    t_start = time.perf_counter()
    model, info = onnx_model.load_classifier(job.onnx)
    labels = read_labels(job.labels) if job.labels else None
    labels_by_slot, offset = resolve_labels(labels, info.num_classes, job.label_offset, str(job.labels))
    output_kind = job.output_kind or _guess_output_kind(model)

    calib_split, eval_split = calibration.resolve_splits(job.calib, job.eval_dir, job.calib_split, job.eval_split)
    pool = calibration.items(job.calib, calib_split)
    calib = calibration.load(pool, job.calib_count, info.hw, job.preprocess, seed=job.seed)
    log.info(
        "calibration: %d images from %d classes (%d found, %d unreadable)",
        len(calib.images), calib.classes, calib.found, len(calib.corrupt),
    )
    same_unsplit = job.eval_dir is not None and job.eval_dir.resolve() == job.calib.resolve()
    same_unsplit = same_unsplit and calib_split == eval_split == "all"
    if job.eval_dir is not None and not same_unsplit:
        eval_items = calibration.items(job.eval_dir, eval_split)
        eval_note = f"{job.eval_dir} ({eval_split})"
    else:
        used = {i.path for i in calib.items}
        eval_items = [i for i in pool if i.path not in used]
        eval_note = f"{job.calib} images not used for calibration"
    overlap = {i.path.resolve() for i in calib.items} & {i.path.resolve() for i in eval_items}
    if overlap:
        raise InputError(
            f"{len(overlap)} evaluation images were also used for calibration (e.g. {sorted(overlap)[0]}); "
            "use disjoint folders or --calib-split calib --eval-split eval"
        )
    if not eval_items:
        log.warning("no images left for evaluation; pass --eval DIR for a fidelity report")
    eval_items = eval_items[: job.eval_limit]
    classes = info.num_classes - offset
    if any(i.class_index is not None and i.class_index >= classes for i in eval_items):
        log.warning("labels.json class indices exceed the model's %d classes; reporting agreement only", classes)
        eval_items = [calibration.Item(i.path, i.group) for i in eval_items]

    if job.stem_rewrite:
        rewritten = rewrite_stem(model, info.input_name, info.hw, info.layout)
        stem_report, graph = rewritten.summary(), rewritten.model
    else:
        log.info("stem rewrite: not applied (disabled by --no-stem-rewrite)")
        stem_report, graph = {"applied": False, "reason": "disabled (--no-stem-rewrite)"}, model
    prepared = onnx_model.with_pixel_input(graph, info, job.preprocess)
    work = Path(tempfile.mkdtemp(prefix="edge-resnet-convert-"))
    try:
        q = quantize(prepared, info, calib.images, work, job.range_method, job.bias_correction)
    finally:
        if job.keep_workdir:
            log.info("onnx2tf working folder kept at %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    stem = job.onnx.stem
    job.out.mkdir(parents=True, exist_ok=True)
    source = {
        "onnx": job.onnx.name,
        "onnx_sha256": info.sha256,
        "onnx_opset": info.opset,
        "onnx_layout": info.layout,
        "dynamic_batch_fixed_to_1": info.dynamic_batch,
        "normalisation_folded": job.preprocess.to_dict(),
        "converters": _versions(),
        "calibration": {
            "images": len(calib.images),
            "classes": calib.classes,
            "unreadable_skipped": len(calib.corrupt),
            "folder": str(job.calib),
            "split": calib_split,
            "seed": job.seed,
            # which images exactly, so a comparison (edge-resnet bench's onnxruntime INT8) can use the same ones
            "files": [_relative(it.path, job.calib) for it in calib.items],
        },
        "quantization": q.details,
        "stem_rewrite": stem_report,
        **job.extra_source,
    }
    meta = BundleMeta(
        preprocess=folded_spec(job.preprocess),
        labels=labels_by_slot if labels is not None else [],
        label_offset=offset,
        output_kind=output_kind,
        source=source,
    )
    bundle = write_bundle(q.int8_tflite, meta, job.out / f"{stem}_int8.tflite")
    fmeta = BundleMeta(
        preprocess=meta.preprocess, labels=meta.labels, label_offset=offset, output_kind=output_kind,
        source={**source, "quantization": {"method": "none (float32 reference)"}},
    )
    float_model = write_bundle(q.float_tflite, fmeta, job.out / f"{stem}_float32.tflite")

    ref = verify.OnnxReference(job.onnx, info, job.preprocess)
    extra: dict[str, Any] = {
        "model": bundle.name,
        "source": source,
        "evaluation_set": eval_note,
        "sizes_bytes": {
            "onnx": job.onnx.stat().st_size,
            "float_tflite": len(q.float_tflite),
            "int8_tflite": len(q.int8_tflite),
        },
    }
    if eval_items:
        report = verify.evaluate(bundle, float_model, ref, eval_items, offset, job.max_top1_drop, extra)
    else:
        report = verify.Report(extra)
    if job.edgetpu:
        report.data["edgetpu"] = edgetpu.compile_report(bundle, q.int8_tflite)
    report.data["wall_time_s"] = round(time.perf_counter() - t_start, 1)
    json_path = job.out / f"{stem}_int8.report.json"
    md_path = job.out / f"{stem}_int8.report.md"
    report.write(json_path, md_path)
    verify.check(report)
    if job.edgetpu:
        edgetpu.require_compiled(report.data["edgetpu"])
    return ConvertResult(bundle, float_model, json_path, md_path, report.data)


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path)
