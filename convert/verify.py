"""Verification report: FP32 ONNX (onnxruntime) against the INT8 bundle run the way the device runs it.

The INT8 side goes through `edge_resnet.engine.Engine` (XNNPACK, as on the device) and
`edge_resnet.classify.Classifier` with the bundle's own metadata, so the report measures the
file that ships, preprocessing included, not a lab copy of it. A bundle with an embedding output gets
that output compared with the FP32 TFLite model's on the first evaluation images (SQNR, cosine).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_resnet.classify import Classifier, dequantize
from edge_resnet.engine import Engine
from edge_resnet.errors import InputError, VerificationError
from edge_resnet.images import load_image
from edge_resnet.preprocess import PreprocessSpec, TensorInfo, prepare

from .calibration import Item
from .onnx_model import OnnxInfo
from .progress import Progress
from .quantize import sqnr_db

FLOAT_COMPARE_IMAGES = 20
EMBEDDING_COMPARE_IMAGES = 64  # INT8 vs FP32 TFLite embedding: the float model runs on these too
DEFAULT_MIN_AGREEMENT = 97.0  # percent; see Gate
NOT_MEASURED = "not measured (no evaluation set)"


@dataclass
class Report:
    data: dict[str, Any] = field(default_factory=dict)

    def write(self, json_path: Path, md_path: Path) -> None:
        json_path.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        md_path.write_text(to_markdown(self.data))


class OnnxReference:
    """The FP32 ONNX model with the original preprocessing (normalisation not folded)."""

    def __init__(self, path: Path, info: OnnxInfo, spec: PreprocessSpec) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.tensor = TensorInfo(info.input_name, info.input_shape, np.dtype(np.float32))
        self.spec = spec
        self.name = info.input_name

    def logits(self, frame_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        x = prepare(frame_bgr, self.spec, self.tensor)
        out = self.session.run(None, {self.name: x.astype(np.float32)})[0]
        return np.asarray(out, np.float64).reshape(-1)


def float_tflite_diff(float_model: Path, ref: OnnxReference, frames: Sequence[npt.NDArray[np.uint8]]) -> float:
    """Max |FP32 TFLite - FP32 ONNX| over output values: proves the graph conversion itself is exact."""
    engine = Engine.load(float_model, "cpu")
    clf = Classifier(engine)
    worst = 0.0
    for f in frames:
        out = dequantize(engine.invoke(clf.prepare(f)), engine.output).astype(np.float64)
        worst = max(worst, float(np.max(np.abs(out - ref.logits(f)))))
    return worst


class EmbeddingComparison:
    """The INT8 bundle's embedding output against the FP32 TFLite model's on the first evaluation images."""

    def __init__(self, float_model: Path, limit: int = EMBEDDING_COMPARE_IMAGES) -> None:
        self.engine = Engine.load(float_model, "cpu")
        self.clf = Classifier(self.engine)
        self.limit = limit if self.engine.embedding is not None else 0
        self.ref: list[npt.NDArray[np.float64]] = []
        self.out: list[npt.NDArray[np.float64]] = []

    def add(self, frame: npt.NDArray[np.uint8], int8: Engine) -> None:
        """Compare on `frame`, which `int8` has just been invoked on."""
        if len(self.ref) >= self.limit or int8.embedding is None or self.engine.embedding is None:
            return
        self.out.append(dequantize(int8.embedding_row(), int8.embedding).astype(np.float64))
        self.engine.invoke(self.clf.prepare(frame))
        self.ref.append(dequantize(self.engine.embedding_row(), self.engine.embedding).astype(np.float64))

    def summary(self) -> dict[str, Any]:
        if not self.ref:
            return {"images": 0}
        ref, out = np.stack(self.ref), np.stack(self.out)
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
        cos = np.sum(ref * out, axis=1) / np.where(norms > 0, norms, 1.0)
        return {
            "images": len(ref),
            "sqnr_db": round(sqnr_db(ref, out), 2),
            "cosine_mean": round(float(np.mean(cos)), 4),
            "cosine_min": round(float(np.min(cos)), 4),
        }


def evaluate(
    bundle: Path,
    float_model: Path,
    ref: OnnxReference,
    items: Sequence[Item],
    label_offset: int,
    gate: Gate,
    extra: dict[str, Any],
) -> Report:
    """Run both models on `items` and build the report with the gate's verdict; raises nothing (`check` does)."""
    engine = Engine.load(bundle, "cpu")
    clf = Classifier(engine)
    emb = EmbeddingComparison(float_model) if engine.embedding is not None else None
    n = agree = 0
    top1 = {"fp32": 0, "int8": 0}
    top5 = {"fp32": 0, "int8": 0}
    labelled = 0
    refs: list[npt.NDArray[np.float64]] = []
    outs: list[npt.NDArray[np.float64]] = []
    latencies: list[float] = []
    frames_for_float: list[npt.NDArray[np.uint8]] = []
    skipped = 0
    with Progress("evaluating", len(items)) as bar:
        for it in items:
            bar.update()
            try:
                frame = load_image(it.path)
            except InputError:
                skipped += 1
                continue
            if len(frames_for_float) < FLOAT_COMPARE_IMAGES:
                frames_for_float.append(frame)
            r = ref.logits(frame)
            res = clf.classify(frame, k=5)
            t0 = time.perf_counter()
            raw = engine.invoke(clf.prepare(frame))
            latencies.append((time.perf_counter() - t0) * 1000.0)
            q = dequantize(raw, engine.output).astype(np.float64)
            if emb is not None:
                emb.add(frame, engine)
            refs.append(r)
            outs.append(q)
            # dataset classes only, as the INT8 side's top-k: a background slot is never a prediction
            ref_top5 = [int(i) for i in np.argsort(-r[label_offset:], kind="stable")[:5]]
            int8_top5 = [p.class_index for p in res.predictions]
            agree += ref_top5[0] == int8_top5[0]
            n += 1
            if it.class_index is not None:
                labelled += 1
                top1["fp32"] += ref_top5[0] == it.class_index
                top1["int8"] += int8_top5[0] == it.class_index
                top5["fp32"] += it.class_index in ref_top5
                top5["int8"] += it.class_index in int8_top5
    if n == 0:
        raise InputError(
            f"none of the {len(items)} evaluation images is readable; pass --eval with JPEG/PNG/BMP photos"
        )
    d: dict[str, Any] = dict(extra)
    d["evaluation"] = {
        "images": n,
        "unreadable_skipped": skipped,
        "labelled": labelled,
        "top1_agreement_pct": round(100.0 * agree / n, 2),
        "logit_sqnr_db": round(sqnr_db(np.concatenate(refs), np.concatenate(outs)), 2),
    }
    if labelled:
        acc = {
            "top1_fp32_pct": round(100.0 * top1["fp32"] / labelled, 2),
            "top1_int8_pct": round(100.0 * top1["int8"] / labelled, 2),
            "top5_fp32_pct": round(100.0 * top5["fp32"] / labelled, 2),
            "top5_int8_pct": round(100.0 * top5["int8"] / labelled, 2),
        }
        acc["top1_drop_pts"] = round(acc["top1_fp32_pct"] - acc["top1_int8_pct"], 2)
        d["evaluation"].update(acc)
    if emb is not None:
        d["embedding"] = {**d.get("embedding", {}), **emb.summary()}
    d["float_tflite_vs_onnx_max_abs_diff"] = float_tflite_diff(float_model, ref, frames_for_float)
    d["runtime"] = {
        "delegate": engine.delegate,
        "interpreter": f"{engine.runtime.name} {engine.runtime.version}",
        "input": {"dtype": str(engine.input.dtype), "shape": list(engine.input.shape),
                  "scale": engine.input.scale, "zero_point": engine.input.zero_point},
        "invoke_ms_median": round(statistics.median(latencies), 3),
        "invoke_ms_p90": round(float(np.percentile(latencies, 90)), 3),
    }
    d["gate"] = gate.judge(d["evaluation"])
    return Report(d)


@dataclass(frozen=True)
class Gate:
    """The fidelity gate. With ground-truth labels: INT8 top-1 may drop at most `max_top1_drop` points
    below FP32's. Without them: INT8 must agree with FP32's top-1 on at least `min_agreement` % of the
    images (MobileNet v2 reaches 98.6 % on 800 images, generated ResNets ~98 %: 97 leaves room for a
    few flips in 100 images; a broken conversion agrees far less). None turns a rule off."""

    max_top1_drop: float | None = 1.0
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT

    def judge(self, ev: dict[str, Any]) -> dict[str, Any]:
        """The report's `gate` entry for evaluation results `ev`: the rule that applied, its limit and
        what was measured, and `passed`. No None values: a rule that is off is said in words."""
        if "top1_drop_pts" in ev:
            out: dict[str, Any] = {"rule": "top-1 drop vs FP32 (ground truth)", "top1_drop_pts": ev["top1_drop_pts"]}
            if self.max_top1_drop is None:
                return {**out, "rule": "none (no --max-top1-drop)", "passed": True}
            passed = bool(ev["top1_drop_pts"] <= self.max_top1_drop)
            return {**out, "max_top1_drop_pts": self.max_top1_drop, "passed": passed}
        out = {"rule": "top-1 agreement with FP32 (no ground truth)", "top1_agreement_pct": ev["top1_agreement_pct"]}
        if self.min_agreement is None:
            return {**out, "rule": "none (no --min-agreement)", "passed": True}
        passed = bool(ev["top1_agreement_pct"] >= self.min_agreement)
        return {**out, "min_agreement_pct": self.min_agreement, "passed": passed}


def unverified_gate(reason: str) -> dict[str, Any]:
    """The report's `gate` entry when nothing was evaluated (`--no-eval`): why, and no verdict."""
    return {"rule": f"not measured ({reason})", "verified": False}


def passes(report: Report) -> bool:
    """Whether the gate judged the evaluation and it passed (an unevaluated model never passes)."""
    return bool(report.data.get("gate", {}).get("passed", False))


def check(report: Report, rejected: Path | None = None, report_path: Path | None = None) -> None:
    """Raise the gate failure as one line naming the rule, the kept (not deployable) model and the report."""
    gate = report.data.get("gate", {})
    if gate.get("passed"):
        return
    where = f"model kept as {rejected}, report {report_path}" if rejected and report_path else "see the report"
    if "max_top1_drop_pts" in gate:
        raise VerificationError(
            f"INT8 top-1 dropped {gate['top1_drop_pts']:.2f} points (limit {gate['max_top1_drop_pts']:.2f}); "
            f"{where}; add calibration images, or raise --max-top1-drop"
        )
    if "min_agreement_pct" in gate:
        images = report.data.get("evaluation", {}).get("images", "?")
        raise VerificationError(
            f"INT8 top-1 agreement with FP32 is {gate['top1_agreement_pct']:.2f} % on {images} images without "
            f"ground truth (minimum {gate['min_agreement_pct']:.2f} %, --min-agreement); {where}; add "
            "calibration images, give --eval a labels.json for a top-1 drop gate, or lower --min-agreement"
        )
    raise VerificationError(f"the model was not verified ({gate.get('rule', 'no gate')}); {where}")


def to_markdown(d: dict[str, Any]) -> str:
    """Human-readable report beside the model. Only measured figures appear; what was not measured is
    said in words, never as None or nan."""
    ev = d.get("evaluation")
    src = d.get("source", {})
    lines = [
        f"# Conversion report: {src.get('onnx', '?')}",
        "",
        f"- INT8 model: `{d.get('model', '?')}` ({d.get('sizes_bytes', {}).get('int8_tflite', 0) / 1e6:.2f} MB)",
        f"- quantization: {src.get('quantization', {}).get('method', '?')}, "
        f"{src.get('calibration', {}).get('images', '?')} calibration images",
    ]
    if "unverified" in d:
        lines.append(f"- **unverified**: {d['unverified']}")
    if not ev:
        lines.append(f"- evaluation: {NOT_MEASURED}")
    else:
        lines += _evaluation_lines(d, ev)
    lines += _embedding_lines(d.get("embedding"))
    if "edgetpu" in d:
        lines += ["", "## Edge TPU", "", "```", json.dumps(d["edgetpu"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def _evaluation_lines(d: dict[str, Any], ev: dict[str, Any]) -> list[str]:
    rt = d.get("runtime", {})
    lines = [
        f"- evaluation images: {ev['images']} ({ev.get('labelled', 0)} with ground truth)",
        "",
        "| metric | FP32 ONNX | INT8 TFLite |",
        "| --- | --- | --- |",
    ]
    if "top1_fp32_pct" in ev:
        lines.append(f"| top-1 % | {ev['top1_fp32_pct']:.2f} | {ev['top1_int8_pct']:.2f} |")
        lines.append(f"| top-5 % | {ev['top5_fp32_pct']:.2f} | {ev['top5_int8_pct']:.2f} |")
    lines += [
        f"| top-1 agreement with FP32 % | | {ev['top1_agreement_pct']:.2f} |",
        f"| output SQNR vs FP32 (dB) | | {ev['logit_sqnr_db']} |",
        "",
        f"- top-1 drop: {ev['top1_drop_pts']:.2f} points" if "top1_drop_pts" in ev
        else "- top-1 drop: not measured (no ground truth)",
        f"- gate: {_gate_text(d.get('gate', {}))}",
    ]
    if "float_tflite_vs_onnx_max_abs_diff" in d:
        lines.append(f"- FP32 TFLite vs ONNX max abs diff: {d['float_tflite_vs_onnx_max_abs_diff']:.3g}")
    if "invoke_ms_median" in rt:
        lines.append(
            f"- invoke latency here: {rt['invoke_ms_median']} ms median, {rt['invoke_ms_p90']} ms p90 "
            f"({rt.get('delegate', '?')}, {rt.get('interpreter', '?')})"
        )
    return lines


def _gate_text(g: dict[str, Any]) -> str:
    verdict = "passed" if g.get("passed") else "FAILED"
    if "max_top1_drop_pts" in g:
        return f"{g['rule']}: {g['top1_drop_pts']:.2f} points, limit {g['max_top1_drop_pts']:.2f}: {verdict}"
    if "min_agreement_pct" in g:
        return f"{g['rule']}: {g['top1_agreement_pct']:.2f} %, minimum {g['min_agreement_pct']:.2f} %: {verdict}"
    return str(g.get("rule", "none"))


def _embedding_lines(e: dict[str, Any] | None) -> list[str]:
    if not e:
        return []
    if not e.get("output"):
        return [f"- embedding output: none ({e.get('reason', 'not found')})"]
    line = f"- embedding output: {e.get('size')} values (`{e['output']}`, from ONNX `{e.get('onnx_tensor')}`)"
    if e.get("images"):
        line += (f"; INT8 vs FP32 TFLite on {e['images']} evaluation images: SQNR {e.get('sqnr_db')} dB, "
                 f"cosine {e.get('cosine_mean')} mean, {e.get('cosine_min')} min")
    elif "calib_sqnr_db" in e:
        line += f"; INT8 vs FP32 TFLite SQNR {e['calib_sqnr_db']} dB on calibration images"
    return [line]
