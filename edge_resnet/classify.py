"""Post-processing (scores, top-k, labels) and the Classifier that chains preprocess -> engine -> top-k."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .bundle import ModelFile, OutputKind
from .engine import NO_EMBEDDING_HINT, Engine
from .errors import LabelsError, ModelError
from .learn.learned import read_head
from .observation import Prediction
from .preprocess import PRESETS, Box, ChannelOrder, PreprocessSpec, TensorInfo, prepare

log = logging.getLogger(__name__)

IMAGENET_WITH_BACKGROUND = 1001  # TensorFlow/Coral ImageNet models: output 0 is "background"


@dataclass(frozen=True)
class Result:
    predictions: list[Prediction]
    probs: npt.NDArray[np.float32]
    latency_ms: float  # invoke only
    total_ms: float  # preprocess + invoke + postprocess

    @property
    def top(self) -> Prediction:
        return self.predictions[0]


class LabelsFile(list[str]):
    """Labels as read from a file, which they name, so that labels that do not fit a model say which file."""

    def __init__(self, labels: Iterable[str] = (), path: Path | None = None) -> None:
        super().__init__(labels)  # defaults: copies made as type(x)(items) (dataclasses.asdict) still work
        self.path = path


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """One label per line; `N label` lines (Coral style) are placed at index N."""
    p = Path(path)
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise LabelsError(f"labels file {p} cannot be read ({e}); pass a UTF-8 text file, one label per line") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise LabelsError(f"labels file {p} is empty; pass one label per line")
    pairs = [re.match(r"^(\d+)[\s:]+(.+)$", ln) for ln in lines]
    if all(pairs):
        table = {int(m.group(1)): m.group(2).strip() for m in pairs if m}
        return LabelsFile([table.get(i, str(i)) for i in range(max(table) + 1)], p)
    return LabelsFile(lines, p)


def resolve_labels(
    labels: list[str] | None, num_outputs: int, label_offset: int | None, where: str = "labels"
) -> tuple[list[str], int]:
    """Labels indexed by output slot, and how many leading slots are not dataset classes.

    A 1001-output model with 1000 labels, or 1001 labels starting with "background", gets
    offset 1 without being told; without labels it gets offset 1 too, with a warning, because an
    unexplained off-by-one (class 89 for the macaw, ImageNet's 88) is worse than a stated guess.
    """
    if labels is None:
        if label_offset is None and num_outputs == IMAGENET_WITH_BACKGROUND:
            log.warning(
                "%s: the model has 1001 outputs and no labels; reading output 0 as background and output k+1 "
                "as ImageNet class k (pass --labels FILE, or --label-offset 0 if output 0 is a real class)",
                where,
            )
            label_offset = 1
        offset = label_offset or 0
        return ["background"] * offset + [str(i) for i in range(num_outputs - offset)], offset
    n = len(labels)
    if label_offset is None:
        if n == num_outputs:
            label_offset = 1 if labels[0].strip().lower() in ("background", "__background__") else 0
        elif n == num_outputs - 1:
            label_offset = 1
        else:
            label_offset = 0
    if n == num_outputs:
        return list(labels), label_offset
    if n == num_outputs - label_offset:
        return ["background"] * label_offset + list(labels), label_offset
    note = [f"label offset {label_offset}"] if label_offset else []
    what = where
    if isinstance(labels, LabelsFile) and labels.path is not None:  # the file to change: name it, and the model
        what = f"labels file {labels.path}"
        note = note if Path(where) == labels.path else [f"model {where}", *note]
    raise LabelsError(
        f"{what} has {n} labels but the model has {num_outputs} outputs"
        + (f" ({', '.join(note)})" if note else "")
        + "; pass the labels made for this model"
    )


def dequantize(raw: npt.NDArray[Any], t: TensorInfo) -> npt.NDArray[np.float32]:
    if t.quantized:
        return ((raw.astype(np.float32) - t.zero_point) * t.scale).astype(np.float32)
    return raw.astype(np.float32)


def softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    e = np.exp(x - x.max())
    out: npt.NDArray[np.float32] = (e / e.sum()).astype(np.float32)
    return out


def to_probabilities(
    raw: npt.NDArray[Any], t: TensorInfo, output_kind: OutputKind | None = None
) -> npt.NDArray[np.float32]:
    """Dequantize, then softmax unless the model already outputs probabilities.

    With no metadata, values that are non-negative and sum to ~1 are taken as probabilities.
    """
    x = dequantize(raw, t).reshape(-1)
    if output_kind is None:
        output_kind = "probabilities" if x.min() >= 0 and abs(float(x.sum()) - 1.0) < 0.05 else "logits"
    return softmax(x) if output_kind == "logits" else np.asarray(x, dtype=np.float32)


def output_kind_of(t: TensorInfo) -> OutputKind | None:
    """Decide once per model, not per frame: TFLite quantizes a softmax output with scale 1/256 and
    zero point 0 (uint8) or -128 (int8). A per-frame guess fails on unsure frames, whose uint8
    probabilities round to nearly all zeros and would be taken for logits."""
    if t.quantized and abs(t.scale - 1.0 / 256.0) < 1e-9 and t.zero_point in (0, -128):
        return "probabilities"
    return None


def top_k(probs: npt.NDArray[np.float32], k: int, labels: list[str], label_offset: int) -> list[Prediction]:
    """The k best dataset classes; the `label_offset` leading slots (background) are never among them."""
    classes = probs[label_offset:]
    k = max(1, min(k, classes.size))
    # a full stable sort: ties (common in uint8 outputs) go to the lower index whatever k is
    idx = np.argsort(-classes, kind="stable")[:k]
    return [Prediction(labels[int(i) + label_offset], int(i), float(classes[i])) for i in idx]


def default_preprocess(t: TensorInfo) -> PreprocessSpec:
    """For a model without metadata: quantized inputs get the pixels their quantization implies
    (pycoral's convention: mean = zero point, std = 1/scale, i.e. raw pixels), float inputs [-1, 1]."""
    if t.quantized:
        return PreprocessSpec((float(t.zero_point),) * 3, (1.0 / t.scale,) * 3, "RGB", preset="quantization")
    return PRESETS["inception"]


class Classifier:
    """preprocess -> engine -> probabilities -> top-k; what classify, evaluation and the daemon share."""

    def __init__(
        self,
        engine: Engine,
        labels: list[str] | None = None,
        preprocess: PreprocessSpec | None = None,
        label_offset: int | None = None,
        output_kind: OutputKind | None = None,
        bundle: ModelFile | None = None,
    ) -> None:
        """`bundle`: where labels, preprocessing and a head come from when that is not the engine's own
        file: another bundle of the same flatbuffer (regions sharing one loaded backbone)."""
        self.engine = engine
        self.bundle = bundle or engine.model
        if self.bundle.sha256 != engine.model.sha256:
            raise ModelError(f"{self.bundle.path} is not the model loaded from {engine.model.path}")
        meta = self.bundle.meta
        emb = engine.embedding
        # a model from `learn`: its head over the embedding gives the user's classes (+ unknown)
        self.head = read_head(self.bundle, int(np.prod(emb.shape)) if emb is not None else None)
        if self.head is not None:
            if labels is not None:
                raise LabelsError(
                    f"{self.bundle.path.name} is a learned model with its own classes; drop --labels / [model] labels"
                )
            labels, label_offset, output_kind = self.head.labels, 0, "probabilities"
        if preprocess is None:
            if meta is not None:
                preprocess = meta.preprocess
            else:
                preprocess = default_preprocess(engine.input)
                log.debug("%s has no edge-resnet metadata; preprocessing %s", engine.model.path.name, preprocess)
        if labels is None and meta is not None and meta.labels:
            labels = meta.labels
            if label_offset is None:
                label_offset = meta.label_offset
        if output_kind is None and meta is not None:
            output_kind = meta.output_kind
        if output_kind is None:
            output_kind = output_kind_of(engine.output)
        self.preprocess = preprocess
        self.output_kind = output_kind
        if self.head is not None:
            num_outputs = len(self.head.labels)
        elif len(engine.output.shape) > 1:
            num_outputs = int(np.prod(engine.output.shape[1:]))
        else:
            num_outputs = engine.output.shape[0]
        self.labels, self.label_offset = resolve_labels(labels, num_outputs, label_offset, engine.model.path.name)

    def prepare(
        self, frame: npt.NDArray[np.uint8], frame_order: ChannelOrder = "BGR", roi: Box | None = None
    ) -> npt.NDArray[Any]:
        return prepare(frame, self.preprocess, self.engine.input, frame_order, roi)

    def classify(
        self, frame: npt.NDArray[np.uint8], k: int = 5, frame_order: ChannelOrder = "BGR", roi: Box | None = None
    ) -> Result:
        t0 = time.perf_counter()
        x = self.prepare(frame, frame_order, roi)
        t1 = time.perf_counter()
        raw = self.engine.invoke(x)
        t2 = time.perf_counter()
        if self.head is not None:
            probs = self.head.scores(self.embedding_of_last())
            # `unknown` is listed only when it wins (its score is the threshold, not a probability)
            unknown = len(self.labels) - 1
            preds = [p for i, p in enumerate(top_k(probs, k + 1, self.labels, 0)) if i == 0 or p.class_index != unknown]
            preds = preds[:k]
        else:
            probs = to_probabilities(raw, self.engine.output, self.output_kind)
            preds = top_k(probs, k, self.labels, self.label_offset)
        t3 = time.perf_counter()
        return Result(preds, probs, (t2 - t1) * 1000.0, (t3 - t0) * 1000.0)

    def embedding_of_last(self) -> npt.NDArray[np.float32]:
        """The last classified frame's embedding, dequantized (what a head and `learn` take)."""
        emb = self.engine.embedding
        if emb is None:
            raise ModelError(
                f"{self.engine.model.path.name} has no embedding output (an older bundle or a foreign model); "
                f"{NO_EMBEDDING_HINT}"
            )
        return dequantize(self.engine.embedding_row(), emb)

    def embed(
        self, frame: npt.NDArray[np.uint8], frame_order: ChannelOrder = "BGR", roi: Box | None = None
    ) -> npt.NDArray[np.float32]:
        """One image's embedding, preprocessed exactly as classification does."""
        if self.engine.embedding is None:
            self.embedding_of_last()  # raises the one-line error
        self.engine.invoke(self.prepare(frame, frame_order, roi))
        return self.embedding_of_last()
