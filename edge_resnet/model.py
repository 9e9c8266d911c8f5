"""The model lifecycle in one place: load a Classifier from a `[model]` table or from the command
line's flags (through the one preprocessing-override merge), and when the Edge TPU fails mid-run,
load its CPU twin and later try the Edge TPU again. The pipeline only swaps in what this returns.
Every failure is a one-line EdgeResnetError."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Literal, NamedTuple

from .classify import Classifier, default_preprocess, read_labels
from .config import ModelConfig
from .engine import Engine, cpu_twin
from .errors import ConfigError, EdgeResnetError
from .imx500 import is_sensor_model, load_sensor_classifier
from .prepspec import PreprocessSpec, merge_preprocess

log = logging.getLogger(__name__)


def base_preprocess(engine: Engine) -> PreprocessSpec:
    """What overrides go on top of: the bundle's spec, else what a foreign model's quantization implies."""
    meta = engine.model.meta
    return meta.preprocess if meta is not None else default_preprocess(engine.input)


def load_classifier(model: ModelConfig) -> Classifier:
    """Load, verify and warm up a model (Engine.load invokes it once) with its labels and any
    `[model.preprocess]` overrides."""
    if not model.path:
        raise ConfigError("no model given; set [model] path in the config or pass --model FILE.tflite")
    labels = read_labels(model.labels) if model.labels else None
    if is_sensor_model(model.path):  # an IMX500 network's metadata: the network runs on the camera (imx500.py)
        return load_sensor_classifier(model.path, labels)
    engine = Engine.load(model.path, model.device, model.threads)
    spec = None if model.preprocess.empty() else model.preprocess.apply(base_preprocess(engine))
    return Classifier(engine, labels, preprocess=spec)


def preprocess_override(args: argparse.Namespace, base: PreprocessSpec | None) -> PreprocessSpec | None:
    """The spec the user asked for on the command line, on top of `base`; None if nothing was asked."""
    changes = {k: getattr(args, k) for k in ("mean", "std", "channel_order", "crop_fraction", "interpolation")}
    if not args.preset and all(v is None for v in changes.values()):
        return None
    return merge_preprocess(base, args.preset, changes, "custom")


def load_classifier_from_args(args: argparse.Namespace) -> Classifier:
    """`classify`'s model flags (commands/modelargs.py): --model, --labels, --device, --threads, the
    preprocessing flags (on top of the model's own spec: --crop-fraction alone keeps the rest) and
    --label-offset."""
    engine = Engine.load(args.model, device=args.device, threads=args.threads)
    labels = read_labels(args.labels) if args.labels else None
    return Classifier(engine, labels, preprocess_override(args, base_preprocess(engine)), args.label_offset)


class Fallback(NamedTuple):
    """What `cpu_fallback` found: the CPU twin (None: none loads), why the pipeline is degraded, and
    which kind of failure it is (so each kind is warned about once, however its text varies)."""

    classifier: Classifier | None
    reason: str
    kind: Literal["twin", "no-twin", "twin-bad"]


def cpu_fallback(model: ModelConfig | None, failed: Path, error: Exception) -> Fallback:
    """The Edge TPU model `failed` raised `error` mid-run (delegate error, USB re-enumeration): load
    its CPU twin (x.tflite beside x_edgetpu.tflite) so classification goes on."""
    twin = cpu_twin(failed)
    why = f"Edge TPU failed ({str(error).splitlines()[0][:120] if str(error) else type(error).__name__})"
    if twin is None or model is None:
        return Fallback(None, f"{why}; no CPU model beside {failed.name}, retrying the Edge TPU", "no-twin")
    try:
        clf = load_classifier(dataclasses.replace(model, path=str(twin), device="cpu"))
    except EdgeResnetError as e:
        return Fallback(None, f"{why}; its CPU model {twin.name} does not load either ({e})", "twin-bad")
    return Fallback(clf, f"{why}; running the CPU model {twin.name}, retrying the Edge TPU", "twin")


def retry_edgetpu(model: ModelConfig) -> Classifier | None:
    """The configured model again, if it now runs on the Edge TPU (quietly None otherwise: the
    failure was logged once already)."""
    try:
        clf = load_classifier(model)
    except EdgeResnetError as e:
        log.debug("Edge TPU still unavailable: %s", e)
        return None
    return clf if clf.engine.device == "edgetpu" else None  # `auto` chose the CPU again: still degraded
