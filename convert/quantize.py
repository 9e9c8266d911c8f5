"""ONNX -> SavedModel (onnx2tf) -> FP32 TFLite and calibrated -> full-INT8 TFLite, offline.

onnx2tf builds the TensorFlow graph; we stop it once its SavedModel exists and quantize with
TFLite's calibrator ourselves, because that lets us (a) pin the input range to exactly 0..255 so
the uint8 input holds camera pixels, (b) try MSE-optimal activation ranges and (c) correct the
bias that weight rounding introduces, keeping whichever combination measures best. onnx2tf must
still run with `output_integer_quantized_tflite=True`: that makes it pad MaxPool with 0 rather
than -inf, which int8 can represent (the float-min padding is what breaks a self-quantized ResNet).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import onnx

from edge_resnet.errors import ModelError
from edge_resnet.nativelog import filtered_stderr, ours

from . import bias_correction, ranges, tflite_io
from .offline import offline
from .onnx_model import PIXEL_INPUT, OnnxInfo
from .progress import Progress

log = logging.getLogger(__name__)

# onnx2tf loads this from its working directory instead of downloading it from GitHub.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
RangeMethod = Literal["auto", "minmax", "mse"]
SCORE_IMAGES = 32  # calibration images used to choose between quantization candidates


@dataclass
class Quantized:
    """The two models verification compares, and how the INT8 one was made."""

    float_tflite: bytes
    int8_tflite: bytes
    details: dict[str, Any] = field(default_factory=dict)


class _FloatDone(Exception):
    """Raised inside onnx2tf once its SavedModel exists, to skip its own TFLite conversions."""


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _stop_after_saved_model() -> Iterator[None]:
    """Let onnx2tf write its SavedModel, then stop it (the stop is ours, so it ends the block quietly).

    Its next steps convert the Keras model to float32, float16, dynamic-range and four calibrated
    INT8 variants; the Keras-path float conversion alone is minutes for a ResNet-18, while
    converting the SavedModel takes seconds. We convert the SavedModel ourselves.
    """
    from tensorflow.lite.python import lite

    classes = [lite.TFLiteKerasModelConverterV2, lite.TFLiteFrozenGraphConverterV2]
    originals = [c.convert for c in classes]

    def stop(self: Any) -> Any:
        raise _FloatDone()

    for c in classes:
        c.convert = stop
    try:
        yield
    except _FloatDone:
        pass
    finally:
        for c, orig in zip(classes, originals, strict=True):
            c.convert = orig


def onnx2tf_sample(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """onnx2tf's sample file (20x128x128x3, 0..1) made from our own calibration images."""
    idx = np.resize(np.arange(len(images)), 20)
    small = [cv2.resize(images[i], (128, 128), interpolation=cv2.INTER_AREA) for i in idx]
    out: npt.NDArray[np.float32] = (np.stack(small).astype(np.float32) / 255.0).astype(np.float32)
    return out


def run_onnx2tf(
    convert: Callable[..., Any],
    prepared: onnx.ModelProto,
    info: OnnxInfo,
    workdir: Path,
    images: npt.NDArray[np.uint8],
    around: contextlib.AbstractContextManager[Any],
    see: str,
    **options: Any,
) -> float:
    """onnx2tf (`convert`, 1.x or 2.x) on the pixel-input model the way both paths need it; returns its seconds.

    It runs in `workdir` with our sample images there (else it downloads some), offline, inside
    `around`; its exit on a failed op becomes a ModelError pointing at its messages (`see`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / "model.onnx"
    onnx.save(prepared, str(onnx_path))
    np.save(workdir / ONNX2TF_SAMPLE, onnx2tf_sample(images))
    t0 = time.perf_counter()
    # onnx2tf and Keras print progress to stdout; keep stdout for the command's own result
    with _chdir(workdir), offline(), around, contextlib.redirect_stdout(sys.stderr):
        try:
            convert(input_onnx_file_path=str(onnx_path), non_verbose=True, **options)
        except SystemExit:
            raise ModelError(
                f"onnx2tf could not convert {info.path.name} ({see}); "
                "check the model runs in onnxruntime, or report the failing op"
            ) from None
    return time.perf_counter() - t0


def build_float(prepared: onnx.ModelProto, info: OnnxInfo, workdir: Path, images: npt.NDArray[np.uint8]) -> Path:
    """Run onnx2tf on the pixel-input model; returns its SavedModel folder."""
    import onnx2tf

    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "calib.npy", images[:4].astype(np.float32))
    zeros = np.zeros((1, 1, 1, 3), np.float32)
    ones = np.ones((1, 1, 1, 3), np.float32)
    out = workdir / "tf"
    seconds = run_onnx2tf(
        onnx2tf.convert, prepared, info, workdir, images, _stop_after_saved_model(), "see its messages above",
        output_folder_path=str(out),
        output_integer_quantized_tflite=True,
        custom_input_op_name_np_data_path=[[PIXEL_INPUT, "calib.npy", zeros, ones]],
        keep_nwc_or_nhwc_or_ndhwc_input_names=[PIXEL_INPUT] if info.layout == "NHWC" else None,
    )
    if not (out / "saved_model.pb").is_file():
        raise ModelError(f"onnx2tf produced no TensorFlow model for {info.path.name}; see its messages above")
    log.info("onnx2tf float model built in %.1f s", seconds)
    return out


def to_float(saved_model: Path) -> bytes:
    """The FP32 TFLite model: the reference that proves the graph conversion exact."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        with offline():
            out: bytes = conv.convert()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"TFLite conversion failed ({first}); the model has ops TFLite lacks") from None
    return out


def calibrate(saved_model: Path, images: npt.NDArray[np.uint8]) -> bytes:
    """Float TFLite model annotated with min/max activation ranges over the calibration images."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.int8

    def representative() -> Iterator[list[npt.NDArray[np.float32]]]:
        for x in images:
            yield [x[np.newaxis].astype(np.float32)]

    conv.representative_dataset = representative
    conv._experimental_calibrate_only = True
    try:
        with offline():
            calibrated: bytes = conv.convert()
    except Exception as e:  # the converter raises ConverterError/RuntimeError with MLIR text
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"TFLite calibration failed ({first}); the model has ops without int8 kernels") from None
    return calibrated


def to_int8(calibrated: bytes) -> bytes:
    """Quantize a calibrated model: uint8 pixel input, int8 everything else, per-channel weights."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    out: bytes = mlir_quantize(calibrated, input_data_type=tf.uint8, output_data_type=tf.int8)
    return out


@dataclass
class _Candidate:
    ranges: str
    bias_corrected: bool
    model: bytes
    range_stats: dict[str, Any]
    bias_stats: dict[str, Any]
    sqnr_db: float = float("-inf")
    agreement_pct: float = 0.0
    embedding_sqnr_db: float | None = None  # the second output's, when the model has one


def scores_first(model: bytes, info: OnnxInfo) -> bytes:
    """`model` with the class scores as output 0 (`tflite_io.logits_first`), ahead of the embedding output
    `onnx_model.with_embedding_output` added; onnx2tf names signature outputs `output_0`, ... in ONNX order
    (1.x) or after the ONNX outputs, either of which settles a tie of sizes."""
    try:
        return tflite_io.logits_first(model, info.num_classes, ("output_0", info.output_name))
    except ValueError as e:
        raise ModelError(
            f"{info.path.name}: {e}; report it with the model (its features and classes have the same size)"
        ) from None


def quantize(
    prepared: onnx.ModelProto,
    info: OnnxInfo,
    images: npt.NDArray[np.uint8],
    workdir: Path,
    range_method: RangeMethod = "auto",
    correct_bias: bool = True,
) -> Quantized:
    """The whole quantization: float build, calibration, then the best of the refinements.

    Which refinements help depends on the network (bias correction is worth 2.4 points of
    top-1 agreement on MobileNet v2 and costs SQNR on a pre-activation ResNet), so each candidate
    is scored by its output SQNR against the FP32 model on calibration images and the best kept.
    """
    methods: tuple[str, ...] = ("mse", "minmax") if range_method == "auto" else (range_method,)
    with Progress("converting", 3 + len(methods) + int(correct_bias), unit="stage") as bar:
        stage = _Stages(bar)
        with stage("onnx2tf float model", "onnx2tf_s"):
            saved = build_float(prepared, info, workdir, images)
        # TensorFlow orders the SavedModel's outputs by name: the scores go back to output 0 in each model
        with stage("float TFLite", "float_tflite_s"):
            float_tflite = scores_first(to_float(saved), info)
        with stage("calibrating activation ranges", "calibrate_s"):
            calibrated = scores_first(calibrate(saved, images), info)

        def int8(method: str) -> tuple[bytes, dict[str, Any], bytes]:
            refined, range_stats = ranges.refine(calibrated, images, method)
            return scores_first(to_int8(refined), info), range_stats, refined

        choice = choose(float_tflite, images, methods, int8, correct_bias, stage)
        details = {
            **choice.report(log),
            "input": "uint8 pixels (normalisation folded into the model)",
            "output": "int8",
            "timings_s": stage.timings_s(),
        }
        return Quantized(float_tflite, choice.best.model, details)


class _Stages:
    """One conversion stage: a step of the progress bar, TensorFlow's own printing captured (shown with -v),
    its time kept under `timing` for the report."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, timing: str | None = None) -> Iterator[None]:
        t = time.perf_counter()
        self.bar.note(name)
        with filtered_stderr(ours, self.bar.write):
            yield
        self.bar.update()
        if timing is not None:
            self.timings[timing] = time.perf_counter() - t

    def timings_s(self) -> dict[str, float]:
        """The report's `timings_s`: seconds per timed step, in the order they ran."""
        return {k: round(v, 2) for k, v in self.timings.items()}


def _name(c: _Candidate) -> str:
    return f"{c.ranges} ranges" + (" + bias correction" if c.bias_corrected else "")


# method -> (int8 model, range stats, the float model whose weights the int8 model rounded)
Int8Maker = Callable[[str], tuple[bytes, dict[str, Any], bytes]]


@dataclass
class Choice:
    """The kept INT8 model and every candidate scored, so each path logs and reports them alike."""

    best: _Candidate
    candidates: list[_Candidate]
    scored_on: int
    correct_bias: bool

    def report(self, logger: logging.Logger) -> dict[str, Any]:
        """Log the candidates' SQNR on the path's `logger` and return the report fields both paths share.

        Separate from `choose` because the TensorFlow-free path logs this after its progress bar closes.
        """
        best, candidates = self.best, self.candidates
        logger.info(
            "quantization candidates (output SQNR on %d calibration images): %s; keeping %s",
            self.scored_on, ", ".join(f"{_name(c)} {c.sqnr_db:.1f} dB" for c in candidates), _name(best),
        )
        not_corrected = {"layers": 0, "rejected": self.correct_bias}
        embedding = {} if best.embedding_sqnr_db is None else {
            "embedding_calib_sqnr_db": round(best.embedding_sqnr_db, 2)}
        return {
            "method": _name(best),
            "range_method": best.ranges,
            "ranges": best.range_stats,
            "bias_correction": best.bias_stats if best.bias_corrected else not_corrected,
            "candidates": [
                {"method": _name(c), "calib_sqnr_db": round(c.sqnr_db, 2),
                 "calib_agreement_pct": round(c.agreement_pct, 1)}
                for c in candidates
            ],
            **embedding,
            "weights": "int8 per-channel",
            "activations": "int8 per-tensor",
        }


def choose(
    float_tflite: bytes,
    images: npt.NDArray[np.uint8],
    methods: tuple[str, ...],
    int8: Int8Maker,
    correct_bias: bool,
    stage: _Stages,
) -> Choice:
    """Range candidates, then bias correction on the better one; the best by output SQNR is kept.

    Both conversion paths make their INT8 models differently (`int8`) but must choose between them
    the same way, scored against the same float model on the same images: by output 0, the scores (an
    embedding output's SQNR is measured alongside, for the report).
    """
    t = time.perf_counter()
    score_images = images[:SCORE_IMAGES]
    with filtered_stderr(ours):
        refs = tflite_io.output_rows(float_tflite, score_images)
    ref = refs[0]

    def scored(c: _Candidate) -> _Candidate:
        outs = tflite_io.output_rows(c.model, score_images)
        out = outs[0]
        c.sqnr_db = sqnr_db(ref, out)
        c.agreement_pct = float(np.mean(out.argmax(axis=1) == ref.argmax(axis=1)) * 100.0)
        if len(refs) > 1 and len(outs) > 1 and refs[1].shape == outs[1].shape:
            c.embedding_sqnr_db = sqnr_db(refs[1], outs[1])
        return c

    # Ranges first, then bias correction on the better ranges only: each bias pass runs the INT8
    # model without XNNPACK, the slowest step on deep networks.
    candidates: list[_Candidate] = []
    weights_of: dict[str, bytes] = {}
    for method in methods:
        with stage(f"{method} ranges"):
            model, range_stats, weights_of[method] = int8(method)
            candidates.append(scored(_Candidate(method, False, model, range_stats, {"layers": 0})))
    best = max(candidates, key=lambda c: c.sqnr_db)
    if correct_bias:
        with stage("bias correction"):
            fixed, bias_stats = bias_correction.correct(best.model, weights_of[best.ranges], images)
            candidates.append(scored(_Candidate(best.ranges, True, fixed, best.range_stats, bias_stats)))
        best = max(candidates, key=lambda c: c.sqnr_db)
    stage.timings["refine_s"] = time.perf_counter() - t
    return Choice(best, candidates, len(score_images), correct_bias)


def sqnr_db(ref: npt.NDArray[np.float64], test: npt.NDArray[np.float64]) -> float:
    """Signal-to-quantization-noise ratio of `test` against `ref`, in dB (inf when identical)."""
    noise = float(np.sum((ref - test) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(float(np.sum(ref**2)) / noise))
