"""The Raspberry Pi AI Camera (Sony IMX500) on the device: the network runs on the sensor, so a frame
arrives with its output tensor already computed and classification is only softmax and labels.

How it joins the pipeline without a second code path there (the narrowest way):
- the picamera2 source in `mode = "imx500"` returns each frame as a `SensorFrame`, a plain BGR
  array that also carries the sensor's float32 outputs and its DNN/DSP times; frames that come
  without a tensor are skipped and counted by the source;
- `[model] path` names the metadata that `convert --target imx500` wrote (`<name>_imx500.json`:
  labels, label offset, output kind), and `load_sensor_classifier` makes a `SensorClassifier` from
  it: a Classifier whose `classify` reads the frame's outputs instead of invoking an interpreter,
  and whose "engine" (`SensorEngine`) says `imx500` / `on-sensor` in /metrics and logs.
Smoothing, sinks, MQTT and the overlay see an ordinary Result. Regions do not apply: the sensor
classifies its whole input (the pipeline warns once and uses the whole frame).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .bundle import ModelFile, OutputKind
from .classify import Classifier, Result, resolve_labels, to_probabilities, top_k
from .engine import Engine, Runtime
from .errors import ConfigError, ModelError
from .preprocess import Box, ChannelOrder, PreprocessSpec, TensorInfo

FORMAT = "edge-resnet-imx500"
READS_VERSION = 2
# v1 (before 2026-12-07): the network took the normalised tensor, which the sensor does not write
# (convert/imx500_input.py); it ran and said wrong labels for a torchvision-normalised model
OLDEST_RIGHT_VERSION = 2
SUFFIX = "_imx500.json"


class SensorFrame(np.ndarray):  # type: ignore[type-arg]  # numpy's generic ndarray subclassing
    """A BGR uint8 frame that carries the IMX500's outputs for it (float32, 1-D) and its KPI times."""

    outputs: npt.NDArray[np.float32]
    dnn_ms: float
    dsp_ms: float


def sensor_frame(image: npt.NDArray[np.uint8], outputs: npt.NDArray[Any], dnn_ms: float = 0.0,
                 dsp_ms: float = 0.0) -> npt.NDArray[np.uint8]:
    """`image` as a SensorFrame carrying `outputs` (what the source hands the capture thread)."""
    f = np.asarray(image).view(SensorFrame)
    f.outputs = np.asarray(outputs, dtype=np.float32).reshape(-1)
    f.dnn_ms, f.dsp_ms = float(dnn_ms), float(dsp_ms)
    return f  # type: ignore[no-any-return]  # a view of a uint8 array stays uint8


def is_sensor_model(path: str | os.PathLike[str]) -> bool:
    """`[model] path` names an IMX500 network's metadata rather than a .tflite."""
    return str(path).endswith(SUFFIX)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"IMX500 metadata {p} not found; copy the <name>_imx500.json that "
                         "`edge-resnet convert --target imx500` wrote beside the network") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"IMX500 metadata {p} is unreadable ({e}); copy it again from the workstation") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ModelError(f"{p} is not IMX500 metadata from edge-resnet; convert with "
                         "`edge-resnet convert --target imx500`")
    if int(d.get("version", 0)) > READS_VERSION:
        raise ModelError(f"{p}: IMX500 metadata v{d['version']} is newer than this edge-resnet reads; "
                         "upgrade edge-resnet")
    if int(d.get("version", 0)) < OLDEST_RIGHT_VERSION:
        raise ModelError(f"{p}: this IMX500 network (metadata v{d.get('version', 0)}) expects normalised input, "
                         "which the sensor does not write, so it would say wrong labels; convert it again with "
                         "`edge-resnet convert --target imx500` and package the new zip")
    return d


class SensorEngine(Engine):
    """What the pipeline and /metrics ask of an engine, for a network that runs on the sensor."""

    def __init__(self, model: ModelFile, num_outputs: int) -> None:  # no interpreter: Engine's init not called
        self.model = model
        self.runtime = Runtime("imx500", "on-sensor", None, lambda lib, opts: None)
        self.delegate = "on-sensor"
        self.device = "imx500"  # type: ignore[assignment]  # Engine's Literal names the interpreters' devices
        self.threads = None
        self.input = TensorInfo("sensor", (1, 224, 224, 3), np.dtype(np.uint8))
        self.output = TensorInfo("outputs", (1, num_outputs), np.dtype(np.float32))
        self.embedding = None
        self._emb_index = -1

    def warm_up(self) -> float:
        return 0.0

    def invoke(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        raise ModelError(f"{self.model.path.name} runs on the IMX500 sensor; it is not invoked on the CPU")

    def ops(self) -> list[dict[str, Any]]:
        return []

    def describe(self) -> str:
        return f"{self.model.path.name} on the IMX500 sensor (Raspberry Pi AI Camera)"


class SensorClassifier(Classifier):
    """Softmax and labels over the outputs a SensorFrame carries; no preprocessing, no interpreter."""

    def __init__(self, engine: SensorEngine, labels: list[str] | None, label_offset: int | None,
                 output_kind: OutputKind, preprocess: PreprocessSpec) -> None:  # Classifier's init not called
        self.engine = engine
        self.bundle = engine.model
        self.head = None
        self.preprocess = preprocess
        self.output_kind = output_kind
        self.labels, self.label_offset = resolve_labels(labels, engine.output.shape[1], label_offset,
                                                        engine.model.path.name)

    def classify(self, frame: npt.NDArray[np.uint8], k: int = 5, frame_order: ChannelOrder = "BGR",
                 roi: Box | None = None) -> Result:
        t0 = time.perf_counter()
        outputs = getattr(frame, "outputs", None)
        if outputs is None:
            raise ModelError(
                f"{self.engine.model.path.name} runs on the IMX500 and this frame carries no sensor output; "
                'use [source] type = "picamera2" with mode = "imx500"'
            )
        if roi is not None:
            raise ConfigError("regions do not apply to an IMX500 network (the sensor classifies its whole input)")
        if outputs.size != self.engine.output.shape[1]:
            raise ModelError(
                f"the sensor's network gives {outputs.size} outputs, {self.engine.model.path.name} describes "
                f"{self.engine.output.shape[1]}; network.rpk and the metadata come from different conversions"
            )
        probs = to_probabilities(outputs, self.engine.output, self.output_kind)
        preds = top_k(probs, k, self.labels, self.label_offset)
        dnn = float(getattr(frame, "dnn_ms", 0.0))
        return Result(preds, probs, dnn, dnn + (time.perf_counter() - t0) * 1000.0)


def load_sensor_classifier(path: str | os.PathLike[str], labels: list[str] | None = None) -> SensorClassifier:
    """The classifier for an IMX500 network, from its `<name>_imx500.json` (labels from it unless given)."""
    p = Path(path)
    d = read_metadata(p)
    try:
        n = int(d["num_outputs"])
        kind: OutputKind = "probabilities" if d.get("output_kind") == "probabilities" else "logits"
        spec = PreprocessSpec.from_dict(d["preprocess"])
        meta_labels = [str(x) for x in d.get("labels") or []]
        offset = int(d.get("label_offset", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{p}: IMX500 metadata lacks {e}; convert again with "
                         "`edge-resnet convert --target imx500`") from None
    model = ModelFile(path=p, flatbuffer=p.read_bytes(), meta=None)
    engine = SensorEngine(model, n)
    return SensorClassifier(engine, labels or meta_labels or None, None if labels else offset, kind, spec)
