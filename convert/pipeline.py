"""The convert job as one importable function: ONNX + images in, verified INT8 bundle + report out."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_resnet.bundle import BundleMeta, OutputKind, write_bundle
from edge_resnet.classify import read_labels, resolve_labels
from edge_resnet.errors import ConfigError, InputError, VerificationError
from edge_resnet.preprocess import PreprocessSpec

from . import calibration, edgetpu, onnx_model, tflite_io, verify
from .backends import Backend, InputType
from .backends import quantize as quantize_with
from .calibration import Split
from .quantize import RangeMethod
from .stem import rewrite as rewrite_stem

log = logging.getLogger(__name__)

DEFAULT_CALIB_COUNT = 200
DEFAULT_EVAL_LIMIT = 1000
MIN_HELD_OUT = 20  # fewer held-out images measure agreement in 5-point steps: not worth a report
UNVERIFIED = (
    "converted with --no-eval: no evaluation set, so nothing measured how far this INT8 model departs from "
    "FP32; convert again with --eval DIR before deploying it"
)


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
    max_top1_drop: float | None = 1.0  # points, with ground truth; None: not gated
    min_agreement: float | None = verify.DEFAULT_MIN_AGREEMENT  # percent, without ground truth; None: not gated
    no_eval: bool = False  # no evaluation set on purpose: the model is written as <name>_int8.unverified.tflite
    keep_float: bool = False  # keep the FP32 TFLite reference as <name>_float32.tflite
    range_method: RangeMethod = "auto"
    backend: Backend = "auto"  # convert/backends.py: litert (no TensorFlow) wherever installed, else tf
    input_type: InputType = "auto"  # pixel input: litert int8 unless uint8 is asked for; tf always uint8
    bias_correction: bool = True
    stem_rewrite: bool = True  # space-to-depth stem (convert/stem.py); off to compare
    edgetpu: bool = False
    seed: int = 0
    keep_workdir: bool = False
    extra_source: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConvertResult:
    bundle: Path  # <name>_int8.tflite, or <name>_int8.unverified.tflite with --no-eval
    float_model: Path | None  # <name>_float32.tflite with keep_float, else not kept
    report_json: Path
    report_md: Path
    report: dict[str, Any]
    verified: bool


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("onnx2tf", "tensorflow", "ai-edge-quantizer", "onnx", "onnxruntime", "ai-edge-litert"):
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

    stem = job.onnx.stem
    plan = plan_or_no_eval(job)
    if plan.items or job.no_eval:  # said once, before the long work: what the report will be measured on
        (log.info if plan.items else log.warning)("evaluation: %s", plan.note)
    calib = calibration.load(plan.calib_pool, job.calib_count, info.hw, job.preprocess, seed=job.seed)
    require_evaluation(job, plan)  # after the calibration images' own errors, before the conversion
    log.info(
        "calibration: %d images from %d classes (%d found, %d unreadable)",
        len(calib.images), calib.classes, calib.found, len(calib.corrupt),
    )
    calib_split = plan.calib_split
    eval_items, eval_note = plan.items, plan.note
    overlap = {i.path.resolve() for i in calib.items} & {i.path.resolve() for i in eval_items}
    if overlap:
        raise InputError(
            f"{len(overlap)} evaluation images were also used for calibration (e.g. {sorted(overlap)[0]}); "
            "use disjoint folders or --calib-split calib --eval-split eval"
        )
    classes = info.num_classes - offset
    if any(i.class_index is not None and i.class_index >= classes for i in eval_items):
        log.warning("labels.json class indices exceed the model's %d classes; reporting and gating on top-1 "
                    "agreement with FP32 only (--min-agreement)", classes)
        eval_items = [calibration.Item(i.path, i.group) for i in eval_items]

    if job.stem_rewrite:
        rewritten = rewrite_stem(model, info.input_name, info.hw, info.layout)
        stem_report, graph = rewritten.summary(), rewritten.model
    else:
        log.info("stem rewrite: not applied (disabled by --no-stem-rewrite)")
        stem_report, graph = {"applied": False, "reason": "disabled (--no-stem-rewrite)"}, model
    prepared = onnx_model.with_pixel_input(graph, info, job.preprocess)
    traced = onnx_model.trace_embedding(graph)
    if isinstance(traced, onnx_model.Embedding):
        emb: onnx_model.Embedding | None = traced
        prepared = onnx_model.with_embedding_output(prepared, traced)
        log.info("embedding: %d values from %s (in front of the %s classifier)", traced.size,
                 onnx_model.shorten(traced.name), traced.classifier)
    else:
        emb = None
        log.warning("the bundle will have no embedding output: %s", traced)
    work = Path(tempfile.mkdtemp(prefix="edge-resnet-convert-"))
    try:
        q = quantize_with(job.backend, prepared, info, calib.images, work, job.range_method, job.bias_correction,
                          job.input_type)
    finally:
        if job.keep_workdir:
            log.info("onnx2tf working folder kept at %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

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
    emb_int8, emb_float = _embedding_meta(emb, q.int8_tflite), _embedding_meta(emb, q.float_tflite)
    if emb is not None and (emb_int8 is None or emb_float is None):
        log.warning("the bundle will have no embedding output: the converted models' outputs are %s and %s "
                    "(elements), not the scores and %d features", tflite_io.output_sizes(q.int8_tflite),
                    tflite_io.output_sizes(q.float_tflite), emb.size)
        emb_int8 = emb_float = None
    meta = BundleMeta(
        preprocess=folded_spec(job.preprocess),
        labels=labels_by_slot if labels is not None else [],
        label_offset=offset,
        output_kind=output_kind,
        source=source,
        embedding=emb_int8,
    )
    final = job.out / f"{stem}_int8.tflite"
    rejected = job.out / f"{stem}_int8.rejected.tflite"
    unverified = job.out / f"{stem}_int8.unverified.tflite"
    float_final = job.out / f"{stem}_float32.tflite"
    # models live under hidden names that do not end in .tflite until the gate has judged them;
    # an interrupt or error removes them, so nothing that looks deployable is left behind
    bundle = job.out / f".{stem}_int8.tflite.unverified"
    float_model = job.out / f".{stem}_float32.tflite.unverified"
    try:
        write_bundle(q.int8_tflite, meta, bundle)
        if eval_items or job.keep_float:  # the evaluation compares with it
            fmeta = BundleMeta(
                preprocess=meta.preprocess, labels=meta.labels, label_offset=offset, output_kind=output_kind,
                source={**source, "quantization": {"method": "none (float32 reference)"}},
                embedding=emb_float,
            )
            write_bundle(q.float_tflite, fmeta, float_model)

        extra: dict[str, Any] = {
            "source": source,
            "evaluation_set": eval_note,
            "sizes_bytes": {
                "onnx": job.onnx.stat().st_size,
                "float_tflite": len(q.float_tflite),
                "int8_tflite": len(q.int8_tflite),
            },
            "embedding": _embedding_report(emb, traced, emb_int8, q.details),
        }
        if eval_items:
            ref = verify.OnnxReference(job.onnx, info, job.preprocess)
            gate = verify.Gate(job.max_top1_drop, job.min_agreement)
            report = verify.evaluate(bundle, float_model, ref, eval_items, offset, gate, extra)
            target = final if verify.passes(report) else rejected
            runtime = report.data.get("runtime") or {}
            if "invoke_ms_median" in runtime:  # the bundle carries its measured latency (the fleet's health
                # window scales the previous model's time on the device by the two bundles' ratio)
                meta.source["runtime"] = {k: runtime[k] for k in ("invoke_ms_median", "delegate", "interpreter")}
                write_bundle(q.int8_tflite, meta, bundle)  # the same flatbuffer, its metadata completed
        else:  # --no-eval (require_evaluation refused a missing evaluation set otherwise)
            report = verify.Report({**extra, "gate": verify.unverified_gate("no evaluation set; --no-eval"),
                                    "unverified": UNVERIFIED})
            target = unverified
        report.data["model"] = target.name
        json_path = job.out / f"{stem}_int8.report.json"
        md_path = job.out / f"{stem}_int8.report.md"
        report.data["wall_time_s"] = round(time.perf_counter() - t_start, 1)
        report.write(json_path, md_path)
        if job.keep_float:
            os.replace(float_model, float_final)
        os.replace(bundle, target)
        if target != final and final.exists():
            log.warning("%s is from an earlier conversion, not the one this report describes", final)
        if target == rejected:
            verify.check(report, rejected, md_path)
    finally:
        bundle.unlink(missing_ok=True)
        float_model.unlink(missing_ok=True)
    if job.edgetpu:
        report.data["edgetpu"] = edgetpu.compile_report(target, q.int8_tflite)
        report.data["wall_time_s"] = round(time.perf_counter() - t_start, 1)
        report.write(json_path, md_path)
        edgetpu.require_compiled(report.data["edgetpu"])
    return ConvertResult(target, float_final if job.keep_float else None, json_path, md_path, report.data,
                         verified=target == final)


def _embedding_meta(emb: onnx_model.Embedding | None, flatbuffer: bytes) -> dict[str, Any] | None:
    """The bundle's `embedding` entry for `flatbuffer` (its own output tensor name: the float and INT8
    models name tensors differently), or None when its second output is not the embedding."""
    if emb is None:
        return None
    names, sizes = tflite_io.output_names(flatbuffer), tflite_io.output_sizes(flatbuffer)
    if len(names) != 2 or sizes[1] != emb.size:
        return None
    return {"output": names[1], "size": emb.size, "onnx_tensor": emb.name}


def _embedding_report(
    emb: onnx_model.Embedding | None, traced: onnx_model.Embedding | str, meta: dict[str, Any] | None,
    details: dict[str, Any],
) -> dict[str, Any]:
    """The report's `embedding` entry before evaluation adds its SQNR: where it is, or why there is none."""
    if emb is None or meta is None:
        return {"reason": traced if isinstance(traced, str) else "the converted model lost it"}  # no output: no key
    out = {**meta, "classifier": emb.classifier}
    if "embedding_calib_sqnr_db" in details:
        out["calib_sqnr_db"] = details["embedding_calib_sqnr_db"]
    return out


@dataclass
class EvaluationPlan:
    """Which images calibrate and which evaluate, decided from the file lists alone, before any decoding:
    an unreadable file is skipped (and counted) wherever it falls, it never moves the split."""

    calib_pool: list[calibration.Item]
    items: list[calibration.Item]
    note: str
    calib_split: Split


def plan_or_no_eval(job: ConvertJob) -> EvaluationPlan:
    """The evaluation plan; with --no-eval the same calibration and nothing to evaluate."""
    if job.no_eval and job.eval_dir is not None:
        raise ConfigError("--no-eval and --eval contradict each other: drop --no-eval to verify on --eval DIR")
    plan = plan_evaluation(job)
    if not job.no_eval:
        return plan
    note = f"none (--no-eval): the model is written unverified, as {job.onnx.stem}_int8.unverified.tflite"
    return EvaluationPlan(plan.calib_pool, [], note, plan.calib_split)


def require_evaluation(job: ConvertJob, plan: EvaluationPlan) -> None:
    """No evaluation set fails the job (exit 8) unless the user said --no-eval: nothing unverified is
    written under a name that looks deployable."""
    if plan.items or job.no_eval:
        return
    raise VerificationError(
        f"no evaluation set to verify the INT8 model on: {plan.note.removeprefix('none: ')}; pass --eval DIR "
        f"(ground truth not needed), or --no-eval to write it unverified as {job.onnx.stem}_int8.unverified.tflite"
    )


def plan_evaluation(job: ConvertJob) -> EvaluationPlan:
    """--eval when given; otherwise a held-out part of the calibration folder, or none when it is too small."""
    calib_split, eval_split = calibration.resolve_splits(job.calib, job.eval_dir, job.calib_split, job.eval_split)
    if job.eval_dir is not None:
        same_unsplit = job.eval_dir.resolve() == job.calib.resolve() and calib_split == eval_split == "all"
        if not same_unsplit:
            pool = calibration.items(job.calib, calib_split)
            found = calibration.items(job.eval_dir, eval_split)
            held = found[: job.eval_limit]
            return EvaluationPlan(pool, held, f"{len(held)} of {len(found)} images in {job.eval_dir} ({eval_split})",
                                  calib_split)
    elif job.calib_split == "auto" and (job.calib / calibration.LABELS_JSON).is_file():
        # the folder says how to split itself: its calibration part calibrates, its evaluation part evaluates
        pool, found = calibration.items(job.calib, "calib"), calibration.items(job.calib, "eval")
        if found:
            held = found[: job.eval_limit]
            return EvaluationPlan(pool, held, f"{len(held)} held-out images of {job.calib} (its labels.json "
                                  "evaluation part; pass --eval DIR to use others)", "calib")
        calib_split = "calib"
    pool = calibration.items(job.calib, calib_split)
    order = calibration.balanced_order(pool, job.seed)
    head, tail = order[: job.calib_count], order[job.calib_count :]
    if len(tail) < MIN_HELD_OUT:
        return EvaluationPlan(pool, [], (
            f"none: {job.calib} has {len(pool)} images and calibration takes up to {job.calib_count}, leaving "
            f"{len(tail)} (fewer than {MIN_HELD_OUT})"), calib_split)
    held = tail[: job.eval_limit]
    return EvaluationPlan(head, held, (
        f"{len(held)} held-out images of {job.calib} (those beyond the {len(head)} calibration images; "
        "pass --eval DIR to use others)"), calib_split)


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path)
