"""`edge-resnet convert`: ONNX classifier -> verified full-INT8 TFLite bundle + report.

Light on purpose: the heavy `convert` package (onnx2tf, ai-edge-quantizer or TensorFlow) and OpenCV are
imported inside run(), so a device without the extra, or a system where OpenCV cannot load, still gets
`--help` and a one-line hint naming the fix.
"""

from __future__ import annotations

import argparse
import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DependencyError, EdgeResnetError, ExitCode, InputError, ModelError
from ..prepspec import INTERPOLATIONS, PRESETS, PreprocessSpec
from .modelargs import rgb_triple

DEFAULT_MIN_AGREEMENT = 97.0  # = convert.verify.DEFAULT_MIN_AGREEMENT (not imported: the extra may be absent)

DESCRIPTION = """\
Convert an ONNX image classifier to a full-INT8 TFLite bundle (uint8 or int8 pixel input with the
normalisation folded in, per-channel int8 weights, int8 activations), calibrated on your images
and verified against the FP32 ONNX model on a disjoint evaluation set.

Split rule: a folder with a labels.json (list of {file, class_index, ...}) is split by position:
entries at positions divisible by 5 are the calibration part, the rest the evaluation part. With
--calib and --eval naming the same such folder, the split is applied automatically (auto);
--calib-split/--eval-split all|calib|eval override it.

Gate (exit 8, the model kept as <name>_int8.rejected.tflite beside the report): with ground truth, INT8
top-1 may drop at most --max-top1-drop points; without it, INT8 must agree with FP32's top-1 on at
least --min-agreement % of the evaluation images. No evaluation set (no --eval, and the calibration
folder has no 20 images to spare) fails too, before any work, unless --no-eval says to write the model
unverified, as <name>_int8.unverified.tflite.
"""


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=helptext, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="ONNX image classifier")
    p.add_argument("--calib", type=Path, required=True, metavar="DIR", help="calibration images (recursive)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--labels", type=Path, metavar="FILE", help="class labels, one per line, stored in the bundle")
    p.add_argument("--label-offset", type=int, metavar="N", help="leading non-class outputs (1 for background)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="imagenet", help="preprocessing (default imagenet)")
    p.add_argument("--mean", type=rgb_triple, metavar="R,G,B", help="pixel-unit mean in model channel order")
    p.add_argument("--std", type=rgb_triple, metavar="R,G,B", help="pixel-unit std in model channel order")
    p.add_argument("--bgr", action="store_true", help="the model expects BGR channel order")
    p.add_argument("--crop-fraction", type=float, metavar="F", help="centre crop share of the shorter side")
    p.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        help="resize filter, recorded in the bundle (default area_fast; 'area' for devices older than area_fast)",
    )
    p.add_argument("--calib-count", type=int, default=200, metavar="N", help="calibration images (default 200)")
    p.add_argument(
        "--calib-split", choices=["auto", "all", "calib", "eval"], default="auto",
        help="which part of a labels.json folder calibrates (see the split rule above)",
    )
    p.add_argument("--eval", type=Path, dest="eval_dir", metavar="DIR", help="evaluation images")
    p.add_argument(
        "--eval-split", choices=["auto", "all", "calib", "eval"], default="auto",
        help="which part of a labels.json folder evaluates (ground truth comes from its class_index)",
    )
    p.add_argument("--eval-limit", type=int, default=1000, metavar="N", help="evaluate at most N images")
    p.add_argument(
        "--max-top1-drop", type=float, default=1.0, metavar="PTS",
        help="with ground truth: fail (exit 8) when INT8 top-1 drops more than PTS points vs FP32 (default 1.0)",
    )
    p.add_argument(
        "--min-agreement", type=percent, default=DEFAULT_MIN_AGREEMENT, metavar="PCT",
        help="without ground truth: fail (exit 8) when INT8's top-1 agrees with FP32's on fewer than PCT %% of "
        "the evaluation images (default 97.0: MobileNet v2 reaches 98.6 %% on 800 images, generated ResNets "
        "~98 %%; 97 allows a few flips per 100 images, a broken conversion agrees far less)",
    )
    p.add_argument(
        "--no-eval", action="store_true",
        help="no evaluation set on purpose: skip verification and write <name>_int8.unverified.tflite "
        "(without it, a conversion with nothing to evaluate on fails with exit 8)",
    )
    p.add_argument(
        "--ranges", choices=["auto", "mse", "minmax"], default="auto",
        help="activation ranges: auto tries MSE-optimal and min/max and keeps the better (default)",
    )
    p.add_argument(
        "--no-bias-correction", action="store_true",
        help="do not try weight-rounding bias correction (by default kept only when it helps)",
    )
    p.add_argument(
        "--no-stem-rewrite", action="store_true",
        help="keep a ResNet's 7x7/2 stem convolution as it is (by default it becomes space-to-depth + "
        "4x4 convolution, identical and ~2x faster under XNNPACK INT8); recorded in the report",
    )
    p.add_argument(
        "--backend", choices=["auto", "litert", "tf"], default="auto",
        help="litert: onnx2tf 2.x + ai-edge-quantizer, no TensorFlow (Python >= 3.12); tf: onnx2tf 1.29 + "
        "TensorFlow 2.19 (Python 3.11, the convert-tf extra); auto (default): litert wherever it is installed",
    )
    p.add_argument(
        "--input-type", choices=["auto", "int8", "uint8"], default="auto",
        help="pixel input tensor: litert makes int8 (scale 1, zero point -128) unless uint8 is asked for; "
        "tf always uint8; the device takes either as it is",
    )
    p.add_argument(
        "--target", choices=["tflite", "imx500"], default="tflite",
        help="tflite (default): the INT8 TFLite bundle; imx500: a network for the Raspberry Pi AI Camera "
        "(<name>_imx500.zip for imx500-package, the [imx500] extra on Python 3.10-3.12, Java 17+)",
    )
    p.add_argument("--edgetpu", action="store_true", help="also compile for the Coral Edge TPU")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument(
        "--keep-float", action="store_true",
        help="also keep the FP32 TFLite model as <name>_float32.tflite: a reference to compare the INT8 "
        "model's outputs with (4x its size, not meant for the device); not kept by default",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep onnx2tf's working folder (debugging)")
    p.set_defaults(func=run)


def percent(text: str) -> float:
    """An argparse type: a number from 0 to 100."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage from 0 to 100")
    return value


def spec_from_args(args: argparse.Namespace) -> PreprocessSpec:
    base = PRESETS[args.preset]
    if (args.mean is None) != (args.std is None):
        raise ConfigError("--mean and --std go together; pass both (pixel units, model channel order)")
    return PreprocessSpec(
        mean=args.mean or base.mean,
        std=args.std or base.std,
        channel_order="BGR" if args.bgr else base.channel_order,
        crop_fraction=args.crop_fraction or base.crop_fraction,
        interpolation=args.interpolation or base.interpolation,
        preset="custom" if args.mean else base.preset,
    )


def job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The fields a TFLite job (ConvertJob) and an IMX500 job (Imx500Job) both take from the same flags,
    so a flag added to the two targets reaches both jobs alike."""
    return {
        "onnx": args.model,
        "calib": args.calib,
        "out": args.out,
        "preprocess": spec_from_args(args),
        "labels": args.labels,
        "label_offset": args.label_offset,
        "calib_count": args.calib_count,
        "calib_split": args.calib_split,
        "eval_dir": args.eval_dir,
        "eval_split": args.eval_split,
        "eval_limit": args.eval_limit,
        "max_top1_drop": args.max_top1_drop,
        "min_agreement": args.min_agreement,
        "no_eval": args.no_eval,
        "range_method": args.ranges,
        "seed": args.seed,
        "keep_workdir": args.keep_workdir,
    }


def run(args: argparse.Namespace) -> int:
    if args.target == "imx500":
        from .convert_imx500 import run as run_imx500

        return run_imx500(args, job_fields(args))
    try:
        from edge_resnet.convert.backends import choose
        from edge_resnet.convert.pipeline import ConvertJob
        from edge_resnet.convert.pipeline import run as convert_run
    except ImportError as e:
        raise import_failure(e) from None
    if not args.model.exists():
        zoo_hint(args.model)
    choose(args.backend)  # a path that is not installed fails here, before images are loaded
    job = ConvertJob(
        **job_fields(args),
        keep_float=args.keep_float,
        backend=args.backend,
        input_type=args.input_type,
        bias_correction=not args.no_bias_correction,
        stem_rewrite=not args.no_stem_rewrite,
        edgetpu=args.edgetpu,
    )
    try:
        result = convert_run(job)
    except ImportError as e:  # onnx2tf and TensorFlow load late, with their own shared libraries
        if not _missing_library(e):
            raise
        raise import_failure(e) from None
    rep = result.report
    print(f"model:  {result.bundle}")
    if not result.verified:
        print(f"unverified: {rep.get('unverified', rep.get('gate', {}).get('rule', 'not verified'))}")
    print(f"report: {result.report_md}")
    if result.float_model is not None:
        print(f"float:  {result.float_model} (FP32 reference kept by --keep-float, to compare outputs with; "
              "not for the device)")
    summary = {k: rep[k] for k in ("evaluation", "float_tflite_vs_onnx_max_abs_diff", "gate") if k in rep}
    print(json.dumps(summary, sort_keys=True))
    return int(ExitCode.OK)


def zoo_hint(model: Path) -> None:
    """A missing MODEL that is a model-zoo name (`resnet50-v1`) is an `edge-resnet fetch` away: say so, and
    where fetch saves it (the current folder); any other missing path is left to the loader's message."""
    from edge_resnet.convert.fetch import canonical

    if model.parent != Path("."):
        return
    try:
        stem = canonical(model.name)
    except InputError:
        return
    saved = Path(f"{stem}.onnx")
    if saved.is_file():
        raise ModelError(f"ONNX model {model} not found: {model.name} is a model-zoo name, fetched already into this "
                         f"folder as {saved}; convert that file")
    raise ModelError(f"ONNX model {model} not found: {model.name} is a model-zoo name; `edge-resnet fetch "
                     f"{stem.removesuffix('-7')}` saves it in the current folder as {saved}; convert that file")


_SHARED_LIBRARY = re.compile(r"\b(lib[\w.+-]*\.so(?:\.\d+)*)")


def _missing_library(e: ImportError) -> str | None:
    """The shared library an ImportError says the dynamic loader could not find, if that is what it says."""
    m = _SHARED_LIBRARY.search(str(e))
    return m.group(1) if m and "cannot open shared object file" in str(e) else None


def import_failure(e: ImportError) -> EdgeResnetError:
    """One line for a converter import that failed: a missing system library (onnx2tf pins the GUI build
    of OpenCV, whose cv2 needs libxcb, absent on minimal systems) or the convert extra not installed."""
    lib = _missing_library(e)
    if lib is None:
        return DependencyError('conversion needs the convert extra: pip install "edge-resnet[convert]"')
    module = (e.name or "").split(".")[0]
    if module == "cv2" or "xcb" in lib or "libGL" in lib:
        try:
            pin = f"=={version('opencv-python')}"  # the GUI build's version: the headless one of it fits
        except PackageNotFoundError:
            pin = ""
        return DependencyError(
            f"OpenCV cannot load: {lib} is missing (onnx2tf installs the GUI build of OpenCV, which needs it); "
            "put the headless build back over it: "
            f'pip install --force-reinstall --no-deps "opencv-python-headless{pin}"'
        )
    return DependencyError(f"{module or 'a converter package'} cannot load: {lib} is missing; install the system "
                           "package that provides it")
