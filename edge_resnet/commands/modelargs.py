"""Model options shared by the commands that load a model (classify, bench, run)."""

from __future__ import annotations

import argparse

from ..devices import DEVICES
from ..prepspec import INTERPOLATIONS


def add_model_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument("--model", "-m", required=model_required, help="a .tflite model or edge-resnet bundle")
    p.add_argument("--labels", help="labels file, one per line (a bundle carries its own)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="cpu, edgetpu, or auto (Edge TPU if present)")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all usable cores)")
    g = add_preprocess_args(p, "preprocessing for models without edge-resnet metadata")
    g.add_argument("--label-offset", type=int, help="leading outputs that are not classes (1 for background)")


def add_preprocess_args(p: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The options `model.preprocess_override` reads, in one group."""
    g = p.add_argument_group(title)
    g.add_argument("--preset", help="imagenet, inception, caffe or raw")
    g.add_argument("--mean", type=rgb_triple, help="R,G,B mean in 0..255 pixel units")
    g.add_argument("--std", type=rgb_triple, help="R,G,B std in 0..255 pixel units")
    g.add_argument("--channel-order", choices=("RGB", "BGR"), help="the model's channel order")
    g.add_argument("--crop-fraction", type=float, help="centre crop share of the shorter side (0.875)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter (area_fast)")
    return g


def rgb_triple(text: str) -> tuple[float, float, float]:
    """argparse type for R,G,B values (--mean, --std)."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 123.7,116.3,103.5, got {text!r}") from None
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return vals[0], vals[1], vals[2]
