"""`edge-resnet convert`: ONNX classifier -> verified full-INT8 TFLite bundle + report.

Light on purpose: the heavy `convert` package (onnx2tf, ai-edge-quantizer or TensorFlow) is imported inside run(), so
a device without the extra still gets `--help` and a one-line install hint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DependencyError, ExitCode
from ..preprocess import INTERPOLATIONS, PRESETS, PreprocessSpec
from .modelargs import rgb_triple

DESCRIPTION = """\
Convert an ONNX image classifier to a full-INT8 TFLite bundle (uint8 or int8 pixel input with the
normalisation folded in, per-channel int8 weights, int8 activations), calibrated on your images
and verified against the FP32 ONNX model on a disjoint evaluation set.

Split rule: a folder with a labels.json (list of {file, class_index, ...}) is split by position:
entries at positions divisible by 5 are the calibration part, the rest the evaluation part. With
--calib and --eval naming the same such folder, the split is applied automatically (auto);
--calib-split/--eval-split all|calib|eval override it.
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
        help="fail (exit 8) when INT8 top-1 drops more than PTS points vs FP32 (default 1.0)",
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
    p.add_argument("--edgetpu", action="store_true", help="also compile for the Coral Edge TPU")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--keep-workdir", action="store_true", help="keep onnx2tf's working folder (debugging)")
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    try:
        from edge_resnet.convert.backends import choose
        from edge_resnet.convert.pipeline import ConvertJob
        from edge_resnet.convert.pipeline import run as convert_run
    except ImportError:
        raise DependencyError('conversion needs the convert extra: pip install "edge-resnet[convert]"') from None
    choose(args.backend)  # a path that is not installed fails here, before images are loaded
    job = ConvertJob(
        onnx=args.model,
        calib=args.calib,
        out=args.out,
        preprocess=spec_from_args(args),
        labels=args.labels,
        label_offset=args.label_offset,
        calib_count=args.calib_count,
        calib_split=args.calib_split,
        eval_dir=args.eval_dir,
        eval_split=args.eval_split,
        eval_limit=args.eval_limit,
        max_top1_drop=args.max_top1_drop,
        range_method=args.ranges,
        backend=args.backend,
        input_type=args.input_type,
        bias_correction=not args.no_bias_correction,
        stem_rewrite=not args.no_stem_rewrite,
        edgetpu=args.edgetpu,
        seed=args.seed,
        keep_workdir=args.keep_workdir,
    )
    result = convert_run(job)
    ev = result.report.get("evaluation", {})
    print(f"model:  {result.bundle}")
    print(f"report: {result.report_md}")
    print(json.dumps({"evaluation": ev, "float_tflite_vs_onnx_max_abs_diff":
                      result.report.get("float_tflite_vs_onnx_max_abs_diff")}, sort_keys=True))
    return int(ExitCode.OK)
